#!/usr/bin/env python
"""Concurrent load on a heritage-match server over loopback: searches mixed with registrations.

    .venv/bin/python -m scripts.load_test --clients 32 --duration 60            # starts its own server
    .venv/bin/python -m scripts.load_test --url http://127.0.0.1:8000 --key KEY  # a running server

With no --url it starts `uvicorn` on a free loopback port with a throw-away data directory, the
offline model, no rate limit (one key drives every client) and a registrar key, and stops it at the
end. It stops by itself: after --duration seconds or --max-requests requests, whichever comes first.
Reports requests, errors and p50/p95 latency per kind as JSON; exits 1 when any request failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

import app
from scripts.common import add_json_option, jpeg_bytes, random_scene, script_parser, write_json

# The folder the app package was imported from: the server process imports the same one.
APP_ROOT = Path(app.__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
REQUEST_TIMEOUT_S = 120  # a queued request on a saturated 2-core machine is slow, not failed


def photo(seed: int, size=(320, 240)) -> bytes:
    """A distinct synthetic photo: smooth random colours with shapes on top."""
    return jpeg_bytes(random_scene(np.random.default_rng(seed), size, rectangles=True), quality=85)


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0

    def add(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)

    def fail(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def report(self, elapsed: float, clients: int) -> dict:
        kinds = {}
        for kind, values in sorted(self.latencies.items()):
            ordered = sorted(values)
            kinds[kind] = {
                "requests": len(values),
                "p50_ms": round(statistics.median(ordered) * 1000, 1),
                "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
                "max_ms": round(ordered[-1] * 1000, 1),
            }
        total = sum(len(v) for v in self.latencies.values())
        return {"clients": clients, "seconds": round(elapsed, 1), "requests": total,
                "errors": sum(self.errors.values()), "error_kinds": self.errors,
                "requests_per_s": round(total / elapsed, 2) if elapsed else 0.0, "by_kind": kinds}


async def _timed(stats: Stats, kind: str, call, expect: int) -> httpx.Response | None:
    t0 = time.perf_counter()
    try:
        r = await call()
    except httpx.HTTPError as exc:
        stats.fail(f"{kind}: {type(exc).__name__}")
        return None
    stats.add(kind, time.perf_counter() - t0)
    if r.status_code != expect:
        stats.fail(f"{kind}: HTTP {r.status_code}")
        return None
    return r


async def client_loop(n: int, client: httpx.AsyncClient, stats: Stats, deadline: float, budget: list[int],
                      register_share: float, registered: list[bytes], run_id: str) -> None:
    rng = random.Random(n)
    i = 0
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        i += 1
        if rng.random() < register_share or not registered:
            data = photo(hash((run_id, n, i)) & 0xFFFFFFFF)
            r = await _timed(stats, "register", lambda: client.post(
                "/v1/artefacts", json={"inventory_number": f"LOAD-{run_id}-{n}-{i}", "title": "load test"}), 201)
            if r is None:
                continue
            art = r.json()["id"]
            if await _timed(stats, "add_photo", lambda: client.post(
                    f"/v1/artefacts/{art}/photos", files={"image": ("p.jpg", data, "image/jpeg")}), 201):
                registered.append(data)
        else:
            query = rng.choice(registered) if rng.random() < 0.5 else photo(rng.randrange(1 << 30))
            await _timed(stats, "search", lambda: client.post(
                "/v1/search", files={"image": ("q.jpg", query, "image/jpeg")}), 200)


async def run_load(url: str, key: str, clients: int = 32, duration: float = 60, max_requests: int = 20_000,
                   register_share: float = 0.2) -> dict:
    """Drive ``clients`` concurrent clients for ``duration`` seconds; returns the report."""
    if urlsplit(url).hostname not in LOOPBACK:
        raise SystemExit(f"refusing {url}: the load test runs against loopback only")
    stats = Stats()
    registered: list[bytes] = []
    budget = [max_requests]
    run_id = f"{os.getpid()}-{int(time.time())}"
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        start = time.monotonic()
        deadline = start + duration
        tasks = [asyncio.create_task(client_loop(n, client, stats, deadline, budget, register_share, registered,
                                                 run_id)) for n in range(clients)]
        # Requests in flight at the deadline may finish; nothing runs past one request timeout more.
        done, pending = await asyncio.wait(tasks, timeout=duration + REQUEST_TIMEOUT_S)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception():
                stats.fail(f"client crashed: {task.exception()!r}")
        return stats.report(time.monotonic() - start, clients)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(model: str = "efficientnet-lite0", extra_env: dict | None = None, start_timeout: float = 180):
    """A uvicorn server on a free loopback port with a fresh data directory; yields (url, registrar key)."""
    from app.registry.store import RegistryStore
    from app.security.keys import KeyStore

    with tempfile.TemporaryDirectory(prefix="hm-load-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        store = RegistryStore(f"sqlite:///{data / 'registry.db'}", data / "photos")
        key = KeyStore(store.sessions).create("load test", "registrar").token
        store.close()
        port = free_port()
        env = {**os.environ, "HM_DATA_DIR": str(data), "HM_MODEL": model, "HM_RATE_LIMIT_PER_MINUTE": "0",
               "PYTHONPATH": str(APP_ROOT), **(extra_env or {})}
        log = open(Path(tmp) / "server.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
                                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                  env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"server exited: {(Path(tmp) / 'server.log').read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not become ready")
                time.sleep(0.3)
            yield url, key
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()


def main() -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--url", help="a running server on loopback; default: start one")
    ap.add_argument("--key", help="API key (registrar or admin) for --url")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60, help="seconds")
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--register-share", type=float, default=0.2, help="share of client steps that register")
    ap.add_argument("--model", default="efficientnet-lite0", help="HM_MODEL of the started server")
    add_json_option(ap, "also write the report here")
    args = ap.parse_args()
    if args.url and not args.key:
        ap.error("--url needs --key")

    def go(url: str, key: str) -> dict:
        return asyncio.run(run_load(url, key, args.clients, args.duration, args.max_requests, args.register_share))

    if args.url:
        report = go(args.url, args.key)
    else:
        with local_server(args.model) as (url, key):
            report = go(url, key)
    report["cpu_count"] = os.cpu_count()
    print(json.dumps(report, indent=2))
    if args.json:
        write_json(args.json, report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
