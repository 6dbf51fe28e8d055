"""A throw-away PostgreSQL server: an ``initdb`` cluster in a temporary folder, listening on a free loopback
port (and a socket in that folder), stopped and removed when done. The tests use it (``tests/pg.py``, one
cluster a session), and so does ``scripts/replicas.py`` (several API replicas on one registry without Docker).

The binaries are Debian's (``/usr/lib/postgresql/<version>/bin``, the newest version found; ``HM_PG_BIN``
names another folder). Without them ``PgServer.start`` raises ``PgUnavailable``, saying why. As root, the
cluster runs as the ``postgres`` user (PostgreSQL refuses to run as root). It trusts every local connection
and runs with fsync off: for tests and trials only, never for a registry anyone keeps.

``fresh_database()`` copies a template database already migrated to the newest revision
(``CREATE DATABASE ... TEMPLATE``), which takes a few milliseconds.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ADMIN = "postgres"  # the cluster's superuser
TEMPLATE = "hm_template"  # migrated to head once a session; each test's database is a copy


class PgUnavailable(Exception):
    """No PostgreSQL server can be started here (the message says why)."""


def pg_bin_dir() -> Path | None:
    named = os.environ.get("HM_PG_BIN")
    if named:
        return Path(named) if (Path(named) / "initdb").exists() else None
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A running cluster: ``url(database, user)`` gives a SQLAlchemy URL; ``fresh_database()`` a new database."""

    def __init__(self, bin_dir: Path, root: Path, port: int, run_as: str | None):
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.port = port
        self.run_as = run_as
        self._names = itertools.count(1)
        self._template_ready = False

    # --- life cycle -------------------------------------------------------------------------------

    @classmethod
    def start(cls) -> "PgServer":
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise PgUnavailable("PostgreSQL binaries not found (Debian package `postgresql`, or HM_PG_BIN)")
        run_as = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable("running as root and there is no `postgres` user to run the server as") from None
            run_as = "postgres"
        # Under /tmp when the server runs as `postgres`: it must reach its folder (TMPDIR may be root's own).
        root = Path(tempfile.mkdtemp(prefix="hm-pg-", dir="/tmp" if run_as else None))
        server = cls(bin_dir, root, free_port(), run_as)
        try:
            server._init_and_start()
        except Exception:
            server.stop()
            raise
        atexit.register(server.stop)  # also when the session ends abnormally
        return server

    def _as_server_user(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        command = ["runuser", "-u", self.run_as, "--", *args] if self.run_as else args
        return subprocess.run(command, check=True, capture_output=True, text=True, **kw)

    def _init_and_start(self) -> None:
        self.socket_dir.mkdir(parents=True)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            for path in (self.root, self.socket_dir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        try:
            self._as_server_user([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", ADMIN, "--auth=trust",
                                  "--encoding=UTF8", "--locale=C", "--no-sync"])
        except subprocess.CalledProcessError as exc:
            raise PgUnavailable(f"initdb failed: {exc.stderr.strip()[-500:]}") from exc
        options = (f"-k {self.socket_dir} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        try:
            self._as_server_user([str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                                  "-l", str(self.root / "server.log"), "-o", options])
        except subprocess.CalledProcessError as exc:
            log = (self.root / "server.log").read_text(errors="replace")[-1000:] if (
                self.root / "server.log").exists() else ""
            raise PgUnavailable(f"the server did not start: {exc.stderr.strip()[-300:]} {log}") from exc

    def stop(self) -> None:
        if not self.root.exists():
            return
        if (self.data / "postmaster.pid").exists():
            try:
                self._as_server_user([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate",
                                      "-w", "-t", "30"])
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    # --- databases ----------------------------------------------------------------------------------

    def url(self, database: str = "postgres", user: str = ADMIN, password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str, database: str = "postgres") -> None:
        """Run statements as the superuser, outside a transaction (CREATE DATABASE needs that)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=ADMIN, dbname=database,
                             autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def psql(self, database: str, *args: str, user: str = ADMIN) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin_dir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                               "-p", str(self.port), "-U", user, "-d", database, *args],
                              capture_output=True, text=True, check=True)

    def new_name(self, prefix: str = "hm_test") -> str:
        return f"{prefix}_{os.getpid()}_{next(self._names)}"

    def empty_database(self) -> str:
        """A new, empty database (no tables); returns its URL."""
        name = self.new_name()
        self.admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def fresh_database(self) -> str:
        """A new database already at the newest schema revision (a copy of the template); returns its URL."""
        if not self._template_ready:
            self._make_template()
        name = self.new_name()
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        return self.url(name)

    def _make_template(self) -> None:
        from sqlalchemy import create_engine

        from app.registry.schema import upgrade

        self.admin(f'CREATE DATABASE "{TEMPLATE}"')
        engine = create_engine(self.url(TEMPLATE))
        try:
            upgrade(engine)
        finally:
            engine.dispose()  # a template must have no connection when it is copied
        self._template_ready = True

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        for _ in range(3):
            try:
                self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except Exception:  # a connection closing at that moment: try again
                time.sleep(0.2)
