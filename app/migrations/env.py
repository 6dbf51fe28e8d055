"""Alembic's environment for the registry database.

Run by ``app.registry.schema`` (``heritage-match db upgrade``, and every start of the service), which hands
over its connection and the models' metadata in ``config.attributes``. Run by Alembic's own command line
(``alembic -c alembic.ini ...``), it reads the database URL from the settings (``HM_DATABASE_URL``, or the
SQLite registry in ``HM_DATA_DIR``). SQLite changes tables in batch mode (copy and move), as it cannot alter
most of a table in place.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

config = context.config


def target_metadata():
    found = config.attributes.get("target_metadata")
    if found is None:
        from app.registry.schema import metadata

        found = metadata
    return found


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata(),
                      render_as_batch=connection.dialect.name == "sqlite", transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def url() -> str:
    named = config.get_main_option("sqlalchemy.url")
    if named:
        return named
    from app.core.config import get_settings

    return get_settings().db_url


if context.is_offline_mode():  # `alembic upgrade --sql`: the statements, for a DBA to read or run
    address = url()
    context.configure(url=address, target_metadata=target_metadata(), literal_binds=True,
                      render_as_batch=address.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    run(config.attributes["connection"])
else:
    engine = create_engine(url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            run(connection)
            connection.commit()
    finally:
        engine.dispose()
