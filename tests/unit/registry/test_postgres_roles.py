"""PostgreSQL: the service's own role (deploy/postgres-roles.sql) runs the registry but cannot change the audit
trail: no UPDATE, DELETE or TRUNCATE of audit rows, no dropping, disabling or replacing of the triggers; a race
of two registrations of one inventory number ends in one record and a Conflict, as on SQLite."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from app.core.errors import Conflict
from app.registry import schema
from app.registry.models import Artefact
from app.registry.store import RegistryStore
from app.security.audit import AuditLog
from app.security.keys import KeyStore

ROLES_SQL = Path(__file__).resolve().parents[3] / "deploy" / "postgres-roles.sql"


@pytest.fixture(scope="module")
def roles(pg_server):
    """An owner and a service role, and a database the owner owns and upgraded, with the roles script run."""
    owner, service, database = (pg_server.new_name(n) for n in ("hm_owner", "hm_service", "hm_roles"))
    pg_server.admin(f'CREATE ROLE "{owner}" LOGIN; CREATE ROLE "{service}" LOGIN')
    pg_server.admin(f'CREATE DATABASE "{database}" OWNER "{owner}"')
    pg_server.admin(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC; '
                    f'GRANT CONNECT ON DATABASE "{database}" TO "{service}"')
    engine = create_engine(pg_server.url(database, owner))
    schema.upgrade(engine)  # `heritage-match db upgrade` as the owner
    engine.dispose()
    pg_server.psql(database, "-v", f"owner={owner}", "-v", f"service={service}", "-f", str(ROLES_SQL), user=owner)
    yield {"owner": pg_server.url(database, owner), "service": pg_server.url(database, service), "names": (
        owner, service)}
    pg_server.drop_database(pg_server.url(database))


def _refused(engine, statement: str) -> str:
    with pytest.raises(DBAPIError) as refused:
        with engine.begin() as conn:
            conn.execute(text(statement))
    return str(refused.value.orig)


def test_the_service_role_runs_the_registry_but_cannot_change_the_audit_trail(roles, tmp_path):
    store = RegistryStore(roles["service"], tmp_path / "photos")  # at the newest revision: opens without changes
    try:
        keys = KeyStore(store.sessions)
        keys.revoke(keys.create("desk", "registrar").key.id)  # an UPDATE of api_keys
        made = store.create_artefact({"inventory_number": "S-1", "institution": ""}, [], None)
        store.update_artefact(made.id, {"title": "Stele"})
        store.delete_artefact(made.id)
        AuditLog(store.sessions).record("test")
        engine = store.engine
        for statement in ("UPDATE audit_events SET key_name = 'x'", "DELETE FROM audit_events",
                          "DELETE FROM audit_results", "TRUNCATE audit_events CASCADE"):
            assert "permission denied" in _refused(engine, statement)
        owner = roles["names"][0]
        for statement in ("DROP TRIGGER audit_events_no_change ON audit_events",
                          "ALTER TABLE audit_events DISABLE TRIGGER ALL",
                          "DROP FUNCTION hm_refuse_change() CASCADE",
                          "CREATE OR REPLACE FUNCTION hm_refuse_change() RETURNS trigger LANGUAGE plpgsql "
                          "AS $$ BEGIN RETURN NEW; END $$",
                          "UPDATE alembic_version SET version_num = '9999'",
                          "CREATE TABLE mine (id int)",
                          f'SET ROLE "{owner}"'):
            said = _refused(engine, statement)
            assert "must be owner" in said or "permission denied" in said, (statement, said)
        with engine.connect() as conn:
            actions = conn.execute(text("SELECT action FROM audit_events ORDER BY id")).scalars().all()
        assert actions == ["key.create", "key.revoke", "artefact.create", "artefact.update", "artefact.delete",
                           "test"]
    finally:
        store.close()

    # The owner may alter its tables, but the triggers refuse its UPDATE and DELETE of audit rows too.
    owner_engine = create_engine(roles["owner"])
    try:
        for statement in ("UPDATE audit_events SET key_name = 'x'", "DELETE FROM audit_events"):
            assert "append-only" in _refused(owner_engine, statement)
    finally:
        owner_engine.dispose()


def test_the_service_role_cannot_upgrade_and_says_who_can(pg_server, roles, tmp_path):
    """A database behind the code, opened by the service's role: a clear refusal naming `db upgrade` and the
    owner, not a half-upgraded schema."""
    owner, service = roles["names"]
    database = pg_server.new_name("hm_behind")
    pg_server.admin(f'CREATE DATABASE "{database}" OWNER "{owner}"')
    try:
        engine = create_engine(pg_server.url(database, owner))
        schema.upgrade(engine, schema.revisions()[0])
        engine.dispose()
        pg_server.psql(database, "-v", f"owner={owner}", "-v", f"service={service}", "-f", str(ROLES_SQL),
                       user=owner)
        with pytest.raises(schema.SchemaBehind) as refused:
            RegistryStore(pg_server.url(database, service), tmp_path / "photos")
        assert "heritage-match db upgrade" in refused.value.message and "owns the tables" in refused.value.message
        engine = create_engine(pg_server.url(database, owner))
        with engine.connect() as conn:
            assert schema.current_revision(conn) == schema.revisions()[0]
        engine.dispose()
    finally:
        pg_server.drop_database(pg_server.url(database))


@pytest.mark.databases
def test_a_registration_race_on_one_inventory_number_ends_in_one_record_and_a_conflict(settings):
    """Registration A has inserted its row and not committed; B registers the same inventory number meanwhile:
    B waits for A, then gets the same Conflict as a registration after A's commit (SQLite: B waits on the
    database's write lock; PostgreSQL: on the unique index)."""
    settings.data_dir.mkdir()
    store = RegistryStore(settings.db_url, settings.data_dir / "photos")
    inserted, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def registration_a() -> None:
        with store.sessions.begin() as s:
            s.add(Artefact(inventory_number="RACE-1", institution="M"))
            s.flush()
            inserted.set()
            release.wait(20)

    def registration_b() -> None:
        try:
            outcome.append(store.create_artefact({"inventory_number": "RACE-1", "institution": "M"}, [], None))
        except Exception as exc:  # what the API turns into a response
            outcome.append(exc)

    a = threading.Thread(target=registration_a)
    a.start()
    try:
        assert inserted.wait(20)
        b = threading.Thread(target=registration_b)
        b.start()
        b.join(1.0)
        assert b.is_alive(), "B did not wait for A's transaction"
    finally:
        release.set()
        a.join(20)
    b.join(40)
    try:
        assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
        assert "already registered" in outcome[0].message
        assert store.count_artefacts() == 1
    finally:
        store.close()
