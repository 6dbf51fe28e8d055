#!/usr/bin/env python
"""Several API replicas on one PostgreSQL registry, on this machine, without Docker: the layout of
deploy/compose.yaml (less its reverse proxy), for trying it out and for the tests and the load test.

    .venv/bin/python -m scripts.replicas --replicas 2                       # a throw-away PostgreSQL too
    .venv/bin/python -m scripts.replicas --replicas 2 --pg-url postgresql+psycopg://u:p@127.0.0.1:5432/db
    .venv/bin/python -m scripts.replicas --replicas 3 --base-port 8101 --duration 600

Without --pg-url it starts a throw-away PostgreSQL cluster (scripts/local_postgres.py: Debian's binaries, a
temporary folder, a loopback port) with the two roles of deploy/postgres-roles.sql: `heritage-match db upgrade`
runs as the owner, the roles script after it, the replicas and the key as the service role. With --pg-url, that
URL does everything (`db upgrade` included), and the database is left as it is at the end.

Then it creates an admin key (`heritage-match keys create`, printed once) and starts N `heritage-match serve`
processes on 127.0.0.1 (ports --base-port, +1, ...), each with a data directory of its own in a temporary
folder (its index and thumbnail cache), HM_PHOTO_STORE=database and the same HM_DATABASE_URL: replicas that
share nothing but the database, as on several machines. It waits for each one's /readyz, prints the URLs and
the key, and runs until Ctrl-C or --duration seconds; then it stops the replicas and the cluster and removes
the temporary folders. Only loopback is ever bound.

Python: ``replica_layout(n, ...)`` is a context manager yielding a ``ReplicaLayout`` (URLs, key, database
URL, and each ``Replica``'s ``kill()`` (SIGKILL) and ``restart()`` (again on its port and data directory)).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from scripts.common import ROOT, script_parser
from scripts.local_postgres import PgServer, PgUnavailable

LOOPBACK = "127.0.0.1"
ROLES_SQL = ROOT / "deploy" / "postgres-roles.sql"
# The roles of deploy/postgres-roles.sql in the throw-away cluster; it trusts local connections: no passwords.
OWNER_ROLE, SERVICE_ROLE, DATABASE = "heritage_owner", "heritage_service", "heritage"
START_TIMEOUT_S = 240  # a replica loads torch and the model; on 2 busy cores that takes a while
STOP_TIMEOUT_S = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    """Nothing listens there. SO_REUSEADDR as uvicorn's own: a killed replica's connections in TIME_WAIT do not
    keep its port from being listened on again."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _cli_env(data_dir: Path, database_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `heritage-match` process of the layout; the caller's own HM_ settings (HM_RUNTIME,
    HM_DEVICE...) pass through unless the layout sets them."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HM_DATA_DIR": str(data_dir), "HM_DATABASE_URL": database_url,
            "HM_PHOTO_STORE": "database", **(extra or {})}


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run `heritage-match ARGS` (as ``python -m app.cli``, the same code as this checkout); its stdout."""
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"heritage-match {' '.join(args)} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


@dataclass
class Replica:
    """One `heritage-match serve` process of the layout; ``kill()`` and ``restart()`` are for crash tests."""

    number: int
    port: int
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    cwd: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"replica {self.number} is running already")
        if not _port_is_free(self.port):
            raise RuntimeError(f"port {self.port} of replica {self.number} is taken")
        log = open(self.log_path, "ab")  # appended to: a restart keeps the killed run's log above its own
        try:
            # A session of its own: Ctrl-C in the terminal reaches this script alone, which stops the replicas
            # in order; and kill() takes the whole process group.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--host", LOOPBACK, "--port", str(self.port)],
                env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until /readyz answers 200 (model loaded, index in step with it); raises with the log's end if the
        process exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise RuntimeError(f"replica {self.number} exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.number} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.3)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash or a machine losing power would stop it: nothing of it runs afterwards."""
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> None:
        """SIGTERM without waiting: uvicorn finishes the requests in flight and shuts down."""
        if self.running:
            self._signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, SIGKILL after ``timeout`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Kill it if it runs, start it again on the same port with the same data directory, wait until ready."""
        self.kill()
        self.start()
        self.wait_ready(timeout)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


@dataclass
class ReplicaLayout:
    """What ``replica_layout`` yields. ``database_url`` is the replicas' own (the service role's, in a cluster
    the layout started); ``owner_url`` the owner's there, None with --pg-url."""

    replicas: list[Replica]
    key: str
    database_url: str
    root: Path  # the temporary folder: data directories, logs (removed at the end)
    owner_url: str | None = None

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]


def _start_cluster(root: Path, cwd: Path) -> tuple[PgServer, str, str]:
    """A throw-away cluster with the owner and service roles and the registry database, migrated by the owner
    and granted by deploy/postgres-roles.sql; returns (server, service URL, owner URL)."""
    server = PgServer.start()
    try:
        server.admin(f'CREATE ROLE "{OWNER_ROLE}" LOGIN; CREATE ROLE "{SERVICE_ROLE}" LOGIN')
        server.admin(f'CREATE DATABASE "{DATABASE}" OWNER "{OWNER_ROLE}"')
        server.admin(f'REVOKE ALL ON DATABASE "{DATABASE}" FROM PUBLIC; '
                     f'GRANT CONNECT ON DATABASE "{DATABASE}" TO "{SERVICE_ROLE}"')
        owner_url = server.url(DATABASE, OWNER_ROLE)
        _cli(["db", "upgrade"], _cli_env(root / "cli-data", owner_url), cwd)
        server.psql(DATABASE, "-v", f"owner={OWNER_ROLE}", "-v", f"service={SERVICE_ROLE}", "-f", str(ROLES_SQL),
                    user=OWNER_ROLE)
    except Exception:
        server.stop()
        raise
    return server, server.url(DATABASE, SERVICE_ROLE), owner_url


@contextlib.contextmanager
def replica_layout(n: int = 2, pg_url: str | None = None, base_port: int | None = None,
                   model: str = "efficientnet-lite0", extra_env: dict[str, str] | None = None,
                   key_role: str = "admin", start_timeout: float = START_TIMEOUT_S,
                   log: bool = False) -> Iterator[ReplicaLayout]:
    """``n`` replicas on one registry database, ready when this yields; everything is stopped and removed after.

    ``pg_url``: an existing database (upgraded here, never dropped); None starts a throw-away cluster.
    ``base_port``: the first replica's port (the others follow); None takes free ports. ``extra_env``: more
    settings for every replica (e.g. ``{"HM_RATE_LIMIT_PER_MINUTE": "0"}``). Each replica gets
    HM_THREADS = cores / n unless ``extra_env`` or the environment says otherwise, so that replicas on one
    machine do not oversubscribe its cores, as ``serve --workers`` does for its workers.
    """
    if n < 1:
        raise ValueError("at least one replica")

    def say(message: str) -> None:
        if log:
            print(message, file=sys.stderr, flush=True)

    root = Path(tempfile.mkdtemp(prefix="hm-replicas-"))
    cwd = root / "cwd"  # no .env of the checkout's is read: the layout's settings are the environment's
    cwd.mkdir()
    server: PgServer | None = None
    replicas: list[Replica] = []
    try:
        owner_url: str | None = None
        if pg_url is None:
            say("starting a throw-away PostgreSQL cluster")
            server, database_url, owner_url = _start_cluster(root, cwd)
        else:
            database_url = pg_url
            _cli(["db", "upgrade"], _cli_env(root / "cli-data", database_url), cwd)
        key = _cli(["keys", "create", "--name", f"replicas-{os.getpid()}", "--role", key_role],
                   _cli_env(root / "cli-data", database_url), cwd).strip().splitlines()[-1]
        settings = {"HM_MODEL": model, **(extra_env or {})}
        if "HM_THREADS" not in settings and "HM_THREADS" not in os.environ and "HM_TORCH_THREADS" not in os.environ:
            settings["HM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // n))
        ports: list[int] = []
        while len(ports) < n:  # a port the system just gave may come again: each replica its own
            port = base_port + len(ports) if base_port is not None else _free_port()
            if port not in ports:
                ports.append(port)
        for i, port in enumerate(ports):
            data_dir = root / f"replica-{i + 1}"
            replicas.append(Replica(number=i + 1, port=port, data_dir=data_dir, log_path=root / f"replica-{i + 1}.log",
                                    env=_cli_env(data_dir, database_url, {**settings, "HM_HOST": LOOPBACK}), cwd=cwd))
        say(f"starting {n} replicas")
        for replica in replicas:  # all at once: each loads its model while the others do
            replica.start()
        for replica in replicas:
            replica.wait_ready(start_timeout)
        yield ReplicaLayout(replicas=replicas, key=key, database_url=database_url, root=root, owner_url=owner_url)
    finally:
        for replica in replicas:  # SIGTERM to all first, so that they shut down side by side
            replica.terminate()
        for replica in replicas:
            replica.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--replicas", type=int, default=2, help="API replicas to start (default 2)")
    ap.add_argument("--pg-url", help="registry database (postgresql+psycopg://...); default: a throw-away cluster")
    ap.add_argument("--base-port", type=int, default=8101, help="the first replica's port on 127.0.0.1")
    ap.add_argument("--model", default="efficientnet-lite0", help="HM_MODEL of every replica (one model for all)")
    ap.add_argument("--duration", type=float, help="stop after this many seconds (default: at Ctrl-C)")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with replica_layout(args.replicas, pg_url=args.pg_url, base_port=args.base_port, model=args.model,
                            log=True) as layout:
            print(f"registry database: {_hide_password(layout.database_url)}")
            for replica in layout.replicas:
                print(f"replica {replica.number}: {replica.url}  (data {replica.data_dir}, log {replica.log_path})")
            print(f"admin key (shown once): {layout.key}")
            print("Ctrl-C stops them." if args.duration is None else f"Stopping in {args.duration:.0f} s.",
                  flush=True)
            deadline = None if args.duration is None else time.monotonic() + args.duration
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
                for replica in layout.replicas:
                    if not replica.running:
                        print(f"replica {replica.number} exited:\n{replica.log_tail()}", file=sys.stderr)
                        return 1
    except KeyboardInterrupt:
        pass
    except PgUnavailable as exc:
        print(f"no PostgreSQL cluster can be started here ({exc}); give one with --pg-url", file=sys.stderr)
        return 2
    print("stopped", file=sys.stderr)
    return 0


def _interrupt(signum, frame) -> None:
    """SIGTERM (from a supervisor) stops the layout as Ctrl-C does, so that nothing is left running."""
    raise KeyboardInterrupt


def _hide_password(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    sys.exit(main())
