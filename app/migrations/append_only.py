"""Triggers that make a table append-only, in each database's own form, for the revisions to create.

SQLite: triggers refusing UPDATE and DELETE, and INSERT OR REPLACE onto an existing row (which deletes
the old row without firing DELETE triggers unless recursive triggers are on). PostgreSQL: one plpgsql
function that raises, fired before each row's UPDATE or DELETE and before a TRUNCATE. Whoever owns the
tables can still drop a trigger; the service's own role does not own them (deploy/postgres-roles.sql).

A revision's schema never changes once released: change these statements only by adding new functions
for a new revision, never by editing the ones an older revision calls.
"""

from __future__ import annotations

from alembic import op

MESSAGE = "the audit trail is append-only"
PG_FUNCTION = "hm_refuse_change"


def sqlite_triggers(table: str, key: tuple[str, ...]) -> list[str]:
    refuse = f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
    same_row = " AND ".join(f"{column} = NEW.{column}" for column in key)
    return [f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON {table} {refuse}"
            for verb in ("UPDATE", "DELETE")] + [
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table} WHEN EXISTS "
        f"(SELECT 1 FROM {table} WHERE {same_row}) {refuse}"
    ]


PG_CREATE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{MESSAGE}: % on % refused', TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END
$$"""


def pg_triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {PG_FUNCTION}()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_FUNCTION}()",
    ]


def trigger_names(dialect: str, table: str) -> set[str]:
    """The triggers ``create`` gives ``table`` on this database (the schema test looks for them)."""
    if dialect == "postgresql":
        return {f"{table}_no_change", f"{table}_no_truncate"}
    return {f"{table}_no_update", f"{table}_no_delete", f"{table}_no_replace"}


def create(tables: dict[str, tuple[str, ...]]) -> None:
    """Make each table (name -> the columns identifying a row) append-only."""
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for table, key in tables.items():
            for ddl in sqlite_triggers(table, key):
                op.execute(ddl)
    elif dialect == "postgresql":
        op.execute(PG_CREATE_FUNCTION)
        for table in tables:
            for ddl in pg_triggers(table):
                op.execute(ddl)
    else:
        raise NotImplementedError(f"append-only tables on {dialect}: only SQLite and PostgreSQL are supported")


def drop(tables: list[str]) -> None:
    dialect = op.get_context().dialect.name
    for table in tables:
        for name in trigger_names(dialect, table):
            op.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if dialect == "postgresql" else ""))


def drop_function() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {PG_FUNCTION}()")
