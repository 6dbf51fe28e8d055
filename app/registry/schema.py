"""The registry database's schema: every table of the registry, and the migrations that make a database match.

The tables are those of ``app.registry.models`` (records, photos, vectors, signatures), ``app.security.models``
(API keys, the audit trail), ``app.registry.archive`` (the listings archive) and ``app.registry.alerts``
(alerts, webhooks). Their schema is made and changed only by the Alembic revisions in ``app/migrations``:

- ``ensure_current`` (every ``RegistryStore``, so the service, the CLI and scans at start): nothing when the
  database is at this code's newest revision (one query); upgrades it when behind; refuses, naming both
  revisions, when the database is ahead (a newer release upgraded it; this code would misread it).
- ``upgrade`` (``heritage-match db upgrade``): takes a lock first (PostgreSQL: an advisory lock; SQLite: a
  file lock beside the database), so several workers starting at once upgrade once. A registry made before
  migrations existed (the tables, no ``alembic_version``) is recognised by its tables, stamped with the
  revision it is, then upgraded in place.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

import app.registry.alerts  # noqa: F401  (alerts, webhook endpoints and deliveries)
import app.registry.archive  # noqa: F401  (the listings archive)
import app.registry.changes  # noqa: F401  (the change feed replicas follow)
import app.registry.models  # noqa: F401  (records, photos, vectors, signatures)
import app.security.models  # noqa: F401  (API keys, audit trail, secrets, rate limits, web state)
from app.core.db import Base
from app.core.errors import AppError
from app.core.files import file_lock

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)
# Alembic's own INFO lines (its plugins, "Context impl SQLiteImpl") say nothing to an operator: upgrade() logs
# what it did. Set before Alembic is first imported (below, in the functions), which logs some of them.
logging.getLogger("alembic").setLevel(logging.WARNING)

metadata = Base.metadata
MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
VERSION_TABLE = "alembic_version"
_PG_LOCK = 0x686D5F736368656D  # pg_advisory_lock key of schema changes ("hm_schem")

# Registries made before migrations existed: the tables each revision adds. A database with the tables of
# 0001 and none of 0002's was made by the last release without migrations; one with more sets, by a
# development build (``create_all``) of the newest revision whose tables it has. Databases made since carry
# their revision.
LEGACY_TABLES: dict[str, frozenset[str]] = {
    "0001": frozenset({"artefacts", "photos", "embeddings", "photo_signatures", "api_keys", "audit_events",
                       "audit_results"}),
    "0002": frozenset({"archive_photos", "archive_listings", "archive_sightings", "archive_vectors", "alerts",
                       "webhook_endpoints", "webhook_deliveries"}),
    "0003": frozenset({"registry_changes", "web_searches", "ended_sessions", "service_secrets", "rate_buckets",
                       "photo_blobs", "archive_blobs", "hunt_positions"}),
}


class SchemaAhead(AppError):
    def __init__(self, current: str, head: str):
        super().__init__(
            f"The registry database is at schema revision {current}, which this version of heritage-match does "
            f"not know (its newest is {head}): a newer version upgraded it. Run that version (or newer), or "
            "restore a backup taken before the upgrade; this one will not read or write it.",
            code="schema_ahead", status_code=503)


class SchemaBehind(AppError):
    def __init__(self, current: str | None, head: str, reason: str):
        super().__init__(
            f"The registry database is at schema revision {current or '(none)'} and this version of heritage-match "
            f"needs {head}, but upgrading it failed: {reason}. Run `heritage-match db upgrade` as a database role "
            "that owns the tables (see deploy/postgres-roles.sql).", code="schema_behind", status_code=503)


class UnknownSchema(AppError):
    def __init__(self, tables: list[str]):
        super().__init__(
            "The registry database has tables but no schema revision, and they are not those of a release "
            f"({', '.join(tables)}): point HM_DATABASE_URL at the registry's own database, or an empty one.",
            code="schema_unknown", status_code=503)


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # the database's revision (None: no alembic_version)
    head: str  # this code's newest revision
    legacy: str | None = None  # a registry made before migrations: the revision its tables are
    empty: bool = False  # no table at all

    @property
    def ahead(self) -> bool:
        return self.current is not None and not known(self.current)

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS))


def head() -> str:
    found = _scripts().get_current_head()
    assert found is not None, "app/migrations has no revision"
    return found


def known(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except Exception:  # alembic's ResolutionError and CommandError: not a revision of this code
        return False


def revisions() -> list[str]:
    """This code's revisions, oldest first."""
    return [r.revision for r in reversed(list(_scripts().walk_revisions()))]


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    cfg.attributes["target_metadata"] = metadata
    return cfg


def current_revision(conn: Connection) -> str | None:
    from alembic.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def state(engine: Engine) -> SchemaState:
    with engine.connect() as conn:
        current = current_revision(conn)
        legacy, empty = (_legacy_revision(conn) if current is None else (None, False))
    return SchemaState(current, head(), legacy, empty)


def _legacy_revision(conn: Connection) -> tuple[str | None, bool]:
    """(the revision a database without ``alembic_version`` is, by its tables; whether it has no table)."""
    tables = set(inspect(conn).get_table_names()) - {VERSION_TABLE, "sqlite_sequence"}
    if not tables:
        return None, True
    present = tables & frozenset().union(*LEGACY_TABLES.values())
    made: set[str] = set()
    for revision, added in LEGACY_TABLES.items():  # oldest first: each release's tables are those before and its own
        made |= added
        if present == made:
            return revision, False
    raise UnknownSchema(sorted(tables))


def ensure_current(engine: Engine) -> SchemaState:
    """Upgrade the database when it is behind this code; refuse when it is ahead (see the module)."""
    if engine.dialect.name == "sqlite":
        # Under the lock from the first connection on: SQLite's first connection to a new file turns WAL on,
        # which another process's first connection could not do while the schema is being made.
        return upgrade(engine)
    now = state(engine)
    if now.up_to_date:
        return now
    if now.ahead:
        assert now.current is not None
        raise SchemaAhead(now.current, now.head)
    return upgrade(engine)


def upgrade(engine: Engine, revision: str = "head") -> SchemaState:
    """Bring the database to ``revision`` (default this code's newest), under the schema lock; returns the state
    it was in before. A registry made before migrations is stamped with its revision first."""
    from alembic import command

    with _schema_lock(engine) as conn:
        current = current_revision(conn)
        legacy, empty = (_legacy_revision(conn) if current is None else (None, False))
        before = SchemaState(current, head(), legacy, empty)
        if before.ahead:
            assert current is not None
            raise SchemaAhead(current, before.head)
        if before.up_to_date and revision == "head":
            return before
        cfg = alembic_config(conn)
        try:
            if legacy is not None:
                log.warning("The registry database has no schema revision; its tables are those of revision %s "
                            "(made before migrations): stamping it %s, then upgrading.", legacy, legacy)
                command.stamp(cfg, legacy)
                conn.commit()
            command.upgrade(cfg, revision)
            conn.commit()
        except DBAPIError as exc:
            conn.rollback()
            if getattr(exc.orig, "sqlstate", None) == "42501":  # insufficient_privilege: the service's own role
                raise SchemaBehind(current, before.head, str(exc.orig).splitlines()[0]) from exc
            raise
        after = current_revision(conn)
        if after != current:
            log.info("Registry database upgraded from %s to %s.", current or legacy or "an empty database", after)
        return before


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection holding the lock on schema changes: one process upgrades, the others wait, then find it done."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        database = engine.url.database or ""
        if database and database != ":memory:" and "mode=memory" not in str(engine.url):
            with file_lock(Path(database).with_name(Path(database).name + ".schema-lock")):
                with engine.connect() as conn:
                    yield conn
            return
        with engine.connect() as conn:
            yield conn
        return
    with engine.connect() as conn:
        if dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK})
            conn.commit()
        try:
            yield conn
        finally:
            if dialect == "postgresql":
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK})
                conn.commit()
