"""The registry database's SQLAlchemy base.

Each table module declares its tables on ``Base`` (``app.registry.models``: the records, photos and
vectors; ``app.security.models``: API keys and the audit trail; the listings archive and the alerts). The
schema is made and changed by the migrations in ``app/migrations`` only (``app.registry.schema``), never by
``create_all``. A table whose rows must never change says so with ``info={APPEND_ONLY: key columns}``: its
migration gives it triggers that refuse the change (``app/migrations/append_only.py``), so the guarantee
lives in the database, not in the code that happens to be running, and the schema test checks that every
such table has them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase

APPEND_ONLY = "append_only"  # Table.info key: the columns that identify a row


class Base(DeclarativeBase):
    pass


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def is_unique_violation(exc: IntegrityError) -> bool:
    """Whether a write failed on a unique constraint (SQLite's message; PostgreSQL's SQLSTATE 23505)."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate == "23505"
    return "UNIQUE CONSTRAINT FAILED" in str(exc.orig).upper()
