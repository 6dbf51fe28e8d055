#!/usr/bin/env python
"""Concurrent load on heritage-match over loopback: searches mixed with registrations, on one server or
spread over several replicas of one registry.

    .venv/bin/python -m scripts.load_test --clients 32 --duration 60            # starts its own server
    .venv/bin/python -m scripts.load_test --replicas 2 --clients 32 --duration 60   # 2 replicas, PostgreSQL
    .venv/bin/python -m scripts.load_test --url http://127.0.0.1:8000 --key KEY  # a running server
    .venv/bin/python -m scripts.load_test --url http://127.0.0.1:8101 --url http://127.0.0.1:8102 --key KEY

With no --url and no --replicas it starts `uvicorn` on a free loopback port with a throw-away data directory
(SQLite), the offline model, no rate limit (one key drives every client) and a registrar key, and stops it at
the end. --replicas N starts the layout of scripts/replicas.py instead (a throw-away PostgreSQL cluster unless
--pg-url, N `heritage-match serve` replicas with data directories of their own and the photos in the database,
an admin key, no rate limit). With several servers, client n talks to server n mod N throughout, so every
server takes registrations and searches alike, and a search may look for a photo registered through another.

It stops by itself: after --duration seconds or --max-requests requests, whichever comes first. Reports
requests, errors and p50/p95 latency per kind, and counts per replica (`by_replica`), as JSON. With several
servers it then checks that their indexes agree (`indexed_photos_after`, from /healthz; with --replicas on a
fresh registry: exactly the photos registered), since replicas that answer fast but drift apart would be wrong.
Exits 1 when any request failed or the indexes disagree.
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
from collections.abc import Sequence
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
    # Per replica (server URL): {"requests": n, "errors": n, "by_kind": {kind: n}} (answered requests, as in
    # by_kind).
    servers: dict[str, dict] = field(default_factory=dict)

    def _server(self, url: str) -> dict:
        return self.servers.setdefault(url, {"requests": 0, "errors": 0, "by_kind": {}})

    def add(self, kind: str, seconds: float, server: str = "") -> None:
        self.latencies.setdefault(kind, []).append(seconds)
        counts = self._server(server)
        counts["requests"] += 1
        counts["by_kind"][kind] = counts["by_kind"].get(kind, 0) + 1

    def fail(self, what: str, server: str = "") -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        if server:  # a crashed client or disagreeing indexes are no one replica's
            self._server(server)["errors"] += 1

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
                "requests_per_s": round(total / elapsed, 2) if elapsed else 0.0, "by_kind": kinds,
                "by_replica": self.servers}


async def _timed(stats: Stats, kind: str, call, expect: int, server: str = "") -> httpx.Response | None:
    t0 = time.perf_counter()
    try:
        r = await call()
    except httpx.HTTPError as exc:
        stats.fail(f"{kind}: {type(exc).__name__}", server)
        return None
    stats.add(kind, time.perf_counter() - t0, server)
    if r.status_code != expect:
        stats.fail(f"{kind}: HTTP {r.status_code}", server)
        return None
    return r


async def client_loop(n: int, client: httpx.AsyncClient, stats: Stats, deadline: float, budget: list[int],
                      register_share: float, registered: list[bytes], run_id: str) -> None:
    rng = random.Random(n)
    server = str(client.base_url).rstrip("/")
    i = 0
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        i += 1
        if rng.random() < register_share or not registered:
            data = photo(hash((run_id, n, i)) & 0xFFFFFFFF)
            r = await _timed(stats, "register", lambda: client.post(
                "/v1/artefacts", json={"inventory_number": f"LOAD-{run_id}-{n}-{i}", "title": "load test"}), 201,
                server)
            if r is None:
                continue
            art = r.json()["id"]
            if await _timed(stats, "add_photo", lambda: client.post(
                    f"/v1/artefacts/{art}/photos", files={"image": ("p.jpg", data, "image/jpeg")}), 201, server):
                registered.append(data)  # searched for by every client, through any server
        else:
            query = rng.choice(registered) if rng.random() < 0.5 else photo(rng.randrange(1 << 30))
            await _timed(stats, "search", lambda: client.post(
                "/v1/search", files={"image": ("q.jpg", query, "image/jpeg")}), 200, server)


async def run_load(url: str | Sequence[str], key: str, clients: int = 32, duration: float = 60,
                   max_requests: int = 20_000, register_share: float = 0.2) -> dict:
    """Drive ``clients`` concurrent clients for ``duration`` seconds against one server or several (client n
    talks to server n mod N); returns the report."""
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no server to load")
    for u in urls:
        if urlsplit(u).hostname not in LOOPBACK:
            raise SystemExit(f"refusing {u}: the load test runs against loopback only")
    stats = Stats()
    registered: list[bytes] = []
    budget = [max_requests]
    run_id = f"{os.getpid()}-{int(time.time())}"
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for i, u in enumerate(urls):
            share = len(range(i, clients, len(urls))) or 1  # the clients that talk to it
            limits = httpx.Limits(max_connections=share, max_keepalive_connections=share)
            servers.append(await stack.enter_async_context(httpx.AsyncClient(
                base_url=u.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=REQUEST_TIMEOUT_S,
                limits=limits)))
        for u in urls:
            stats.servers[u.rstrip("/")] = {"requests": 0, "errors": 0, "by_kind": {}}  # listed even if idle
        start = time.monotonic()
        deadline = start + duration
        tasks = [asyncio.create_task(client_loop(n, servers[n % len(servers)], stats, deadline, budget,
                                                 register_share, registered, run_id)) for n in range(clients)]
        # Requests in flight at the deadline may finish; nothing runs past one request timeout more.
        done, pending = await asyncio.wait(tasks, timeout=duration + REQUEST_TIMEOUT_S)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception():
                stats.fail(f"client crashed: {task.exception()!r}")
        elapsed = time.monotonic() - start
        indexed = await _indexes_after(servers, stats) if len(servers) > 1 else None
        report = stats.report(elapsed, clients)
        report["photos_registered"] = len(registered)
        if indexed is not None:
            report["indexed_photos_after"] = indexed
        return report


async def _indexes_after(servers: list[httpx.AsyncClient], stats: Stats, settle_s: float = 10) -> dict[str, int]:
    """Replicas of one registry must end with the same index: each one's photo count (/healthz), once they
    agree, within ``settle_s`` after the load; an error if they never do."""
    deadline = time.monotonic() + settle_s
    while True:
        counts = {}
        for client in servers:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                counts[str(client.base_url).rstrip("/")] = (await client.get("/healthz")).json()["index"]["count"]
        if len(counts) == len(servers) and len(set(counts.values())) == 1:
            return counts
        if time.monotonic() > deadline:
            stats.fail(f"the replicas' indexes differ {settle_s:.0f} s after the load: {counts}")
            return counts
        await asyncio.sleep(0.5)


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
    ap.add_argument("--url", action="append", help="a running server on loopback (again for each replica of one "
                    "registry: clients are spread over them); default: start one")
    ap.add_argument("--key", help="API key (registrar or admin) for --url")
    ap.add_argument("--replicas", type=int, help="start this many replicas on PostgreSQL (scripts/replicas.py) "
                    "instead of one server on SQLite")
    ap.add_argument("--pg-url", help="with --replicas: the registry database; default: a throw-away cluster")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60, help="seconds")
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--register-share", type=float, default=0.2, help="share of client steps that register")
    ap.add_argument("--model", default="efficientnet-lite0", help="HM_MODEL of the started server")
    add_json_option(ap, "also write the report here")
    args = ap.parse_args()
    if args.url and not args.key:
        ap.error("--url needs --key")
    if args.url and args.replicas:
        ap.error("--url and --replicas exclude each other: load running servers, or start replicas")
    if args.replicas is not None and args.replicas < 1:
        ap.error("--replicas must be at least 1")
    if args.pg_url and not args.replicas:
        ap.error("--pg-url goes with --replicas")

    def go(urls: str | list[str], key: str) -> dict:
        return asyncio.run(run_load(urls, key, args.clients, args.duration, args.max_requests, args.register_share))

    if args.url:
        report = go(args.url, args.key)
    elif args.replicas:
        from scripts.replicas import replica_layout

        with replica_layout(args.replicas, pg_url=args.pg_url, model=args.model,
                            extra_env={"HM_RATE_LIMIT_PER_MINUTE": "0"}, log=True) as layout:
            report = go(layout.urls, layout.key)
        report.update(replicas=args.replicas, database="postgresql")
        if not args.pg_url:  # a fresh registry: every replica's index holds exactly the photos registered
            wrong = {u: n for u, n in report.get("indexed_photos_after", {}).items()
                     if n != report["photos_registered"]}
            if wrong:
                report["errors"] += 1
                report["error_kinds"][f"indexes other than the {report['photos_registered']} photos "
                                      f"registered: {wrong}"] = 1
    else:
        with local_server(args.model) as (url, key):
            report = go(url, key)
        report.update(replicas=1, database="sqlite")
    report["cpu_count"] = os.cpu_count()
    print(json.dumps(report, indent=2))
    if args.json:
        write_json(args.json, report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
