"""The registry database's SQLAlchemy base, and the creation of its tables.

Each table module declares its tables on ``Base`` (``app.registry.models``: the records, photos and
vectors; ``app.security.models``: API keys and the audit trail). A table whose rows must never change
says so with ``info={APPEND_ONLY: key columns}``; ``create_tables`` gives it triggers that refuse the
change, so the guarantee lives in the database, not in the code that happens to be running.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

APPEND_ONLY = "append_only"  # Table.info key: the columns that identify a row


class Base(DeclarativeBase):
    pass


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def append_only_triggers(table: str, key: tuple[str, ...]) -> list[str]:
    """SQLite triggers that refuse UPDATE and DELETE on ``table``, and INSERT OR REPLACE onto an existing
    row, which deletes the old row without firing DELETE triggers (SQLite fires them only with recursive
    triggers on)."""
    refuse = "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
    same_row = " AND ".join(f"{column} = NEW.{column}" for column in key)
    return [f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON {table} {refuse}"
            for verb in ("UPDATE", "DELETE")] + [
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table} WHEN EXISTS "
        f"(SELECT 1 FROM {table} WHERE {same_row}) {refuse}"
    ]


def create_tables(engine: Engine) -> None:
    """Create the missing tables of every table module imported so far, then the append-only triggers.
    On other databases than SQLite the service's role gets INSERT and SELECT only on those tables."""
    Base.metadata.create_all(engine)
    if engine.dialect.name != "sqlite":
        return
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            key = table.info.get(APPEND_ONLY)
            if key:
                for ddl in append_only_triggers(table.name, tuple(key)):
                    conn.execute(text(ddl))
