"""``db upgrade`` and ``db current``: the registry database's schema revision (Alembic migrations).

Every start of the service upgrades a database that is behind, so ``db upgrade`` is for operators who
upgrade on purpose: before starting new replicas, or as the role that owns the tables when the service's
own role may not change them (deploy/postgres-roles.sql).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.console import console
from app.core.config import get_settings
from app.core.files import private_data_dir, private_sqlite

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def _engine(create: bool) -> tuple[Engine | None, str]:
    """The registry database's engine (None: a SQLite file that does not exist and ``create`` is off), and its
    URL as it may be shown (no password)."""
    from sqlalchemy import create_engine, make_url, pool

    settings = get_settings()
    url = make_url(settings.db_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        if not Path(url.database).exists():
            if not create:
                return None, shown
            if settings.database_url is None:
                private_data_dir(settings.data_dir)
        private_sqlite(settings.db_url)
    return create_engine(settings.db_url, poolclass=pool.NullPool), shown


def db_upgrade() -> None:
    """Bring the registry database to this version's newest schema revision (creating it when empty)."""
    from app.registry import schema

    engine, shown = _engine(create=True)
    assert engine is not None
    try:
        before = schema.upgrade(engine)
        after = schema.state(engine).current
    finally:
        engine.dispose()
    console.print(f"database: {shown}")
    if before.current == after:
        print(f"already at revision {after} (the newest)")
    elif before.empty:
        print(f"created the schema at revision {after}")
    elif before.current is None:
        print(f"recognised a registry of revision {before.legacy} made before migrations; upgraded it to {after}")
    else:
        print(f"upgraded from revision {before.current} to {after}")


def db_current() -> None:
    """The registry database's schema revision, and whether this version is behind, level with or ahead of it."""
    from app.registry import schema

    engine, shown = _engine(create=False)
    console.print(f"database: {shown}")
    head = schema.head()
    if engine is None:
        print(f"revision: none (no database yet; `heritage-match db upgrade` creates it at {head})")
        return
    try:
        now = schema.state(engine)
    finally:
        engine.dispose()
    if now.up_to_date:
        print(f"revision: {now.current} (the newest: up to date)")
    elif now.ahead:
        print(f"revision: {now.current} (ahead: this version's newest is {head}; a newer heritage-match upgraded "
              "it, and this version refuses to use it)")
    elif now.empty:
        print(f"revision: none (empty database; `heritage-match db upgrade` creates the schema at {head})")
    elif now.current is None:
        print(f"revision: none (a registry made before migrations, recognised as {now.legacy}; "
              f"`heritage-match db upgrade` stamps it and upgrades it to {head})")
    else:
        print(f"revision: {now.current} (behind: this version's newest is {head}; `heritage-match db upgrade` "
              "applies it, as does the next start of the service)")
