"""Schema migrations: the migrated schema is the models' schema on SQLite and PostgreSQL; a registry of the last
release without migrations upgrades in place with every record, photo, vector and audit event; `db current` and
`db upgrade` say where a database stands; a database ahead of the code is refused, naming both revisions."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from app.core.db import APPEND_ONLY
from app.core.errors import AppError
from app.migrations.append_only import trigger_names
from app.registry import schema
from app.registry.store import RegistryStore
from tests.conftest import DATABASES

RELEASE = Path(__file__).resolve().parents[2] / "data" / "release-fc5c7b6"


@pytest.fixture(params=DATABASES)
def empty_database(request, tmp_path):
    """An empty database of each kind: a SQLite file that does not exist yet, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url = server.empty_database()
    yield url
    server.drop_database(url)


def _triggers(conn) -> set[str]:
    if conn.dialect.name == "sqlite":
        return {name for (name,) in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))}
    return {name for (name,) in conn.execute(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"))}


def test_the_migrated_schema_is_the_models_schema(empty_database):
    engine = create_engine(empty_database)
    try:
        schema.upgrade(engine)
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), schema.metadata)
            assert differences == [], ("the models and app/migrations differ: write a revision "
                                       "(python -m scripts.new_migration)", differences)
            assert schema.current_revision(conn) == schema.head()
            dialect = conn.dialect.name
            # Every append-only table has its triggers.
            append_only = [t for t in schema.metadata.sorted_tables if t.info.get(APPEND_ONLY)]
            assert {t.name for t in append_only} >= {"audit_events", "audit_results"}
            assert set().union(*(trigger_names(dialect, t.name) for t in append_only)) <= _triggers(conn)
            # Ids are never given twice: AUTOINCREMENT on SQLite where the model asks for it, a sequence on
            # PostgreSQL for every generated id.
            insp = inspect(conn)
            for table in schema.metadata.sorted_tables:
                if dialect == "sqlite" and table.dialect_options["sqlite"]["autoincrement"]:
                    sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = :t"),
                                       {"t": table.name}).scalar()
                    assert "AUTOINCREMENT" in sql, table.name
                if dialect == "postgresql" and table.autoincrement_column is not None:
                    column = next(c for c in insp.get_columns(table.name)
                                  if c["name"] == table.autoincrement_column.name)
                    assert "nextval" in str(column.get("default")) or column.get("identity"), table.name
    finally:
        engine.dispose()


def test_the_last_revision_downgrades_and_upgrades_again(empty_database):
    """The newest revision's downgrade undoes it (a failed release can be rolled back to the one before)."""
    engine = create_engine(empty_database)
    try:
        schema.upgrade(engine)
        before = schema.revisions()[-2]
        with engine.connect() as conn:
            command.downgrade(schema.alembic_config(conn), before)
            conn.commit()
            assert schema.current_revision(conn) == before
        schema.upgrade(engine)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
    finally:
        engine.dispose()


def test_workers_starting_at_once_upgrade_once(empty_database, tmp_path):
    """Several processes (uvicorn workers, scan workers) open a new database at the same moment."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait(10)
            RegistryStore(empty_database, tmp_path / "photos").close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = create_engine(empty_database)
    try:
        with engine.connect() as conn:
            assert schema.current_revision(conn) == schema.head()
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()


# --- a registry of the last release ---------------------------------------------------------------------------


@pytest.fixture
def release_registry(tmp_path, monkeypatch):
    """The data directory of a registry the last release (fc5c7b6) wrote, with HM_DATA_DIR naming it."""
    from app.core.config import get_settings

    data = tmp_path / "data"
    shutil.copytree(RELEASE / "photos", data / "photos")
    with sqlite3.connect(data / "registry.db") as conn:
        conn.executescript((RELEASE / "registry.sql").read_text())
    monkeypatch.setenv("HM_DATA_DIR", str(data))
    monkeypatch.setenv("HM_MODEL", "efficientnet-lite0")
    monkeypatch.setenv("HM_DEVICE", "cpu")
    monkeypatch.delenv("HM_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


RELEASE_TABLES = ("artefacts", "photos", "embeddings", "photo_signatures", "api_keys", "audit_events",
                  "audit_results", "sqlite_sequence")


def _rows(db: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in RELEASE_TABLES}


def _cli(*args: str):
    from typer.testing import CliRunner

    from app.cli import app as cli_app

    return CliRunner().invoke(cli_app, list(args))


def test_a_registry_of_the_last_release_upgrades_in_place_with_nothing_lost(release_registry, encoder):
    from app.core.config import get_settings
    from app.core.files import sha256_file
    from app.service import MatchingService

    db = release_registry / "registry.db"
    before = _rows(db)
    assert len(before["artefacts"]) == 3 and len(before["photos"]) == 4 and len(before["embeddings"]) == 4
    assert len(before["audit_events"]) == 10 and len(before["audit_results"]) == 1

    said = _cli("db", "current")
    assert said.exit_code == 0, said.output
    assert "made before migrations, recognised as 0001" in said.stdout
    upgraded = _cli("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert f"recognised a registry of revision 0001 made before migrations; upgraded it to {schema.head()}" \
        in upgraded.stdout
    assert f"revision: {schema.head()} (the newest: up to date)" in _cli("db", "current").stdout
    assert "already at revision" in _cli("db", "upgrade").stdout

    # Every row as it was, byte for byte (vectors and signatures included), and the new tables there, empty.
    assert _rows(db) == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(schema.head(),)]
        # The audit trail is still append-only.
        for statement in ("UPDATE audit_events SET key_name = 'x'", "DELETE FROM audit_results"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)

    # The service opens it: photos read back as stored, vectors as stored, searchable, and new ids follow the old.
    service = MatchingService(get_settings(), encoder=encoder).start()
    try:
        for photo in service.store.photos_by_ids([1, 2, 3, 5]):
            assert sha256_file(service.store.photos.path_for(photo.sha256, photo.format)) == photo.sha256
        ids, vectors = service.store.vectors(service.fingerprint)
        assert ids.tolist() == [1, 2, 3, 5] and vectors.shape == (4, 1280)
        stored = {pid: blob for pid, _, _, blob in before["embeddings"]}
        assert all(np.array_equal(vectors[i], np.frombuffer(stored[pid], "<f4")) for i, pid in enumerate(ids))
        query = service.store.photos.read(*next((p[2], p[3]) for p in before["photos"] if p[0] == 1))
        assert service.search(query).results[0].inventory_number == "R-1"
        from app.service import PhotoInput
        from tests.conftest import jpeg_bytes, random_photo

        new = service.register_artefact({"inventory_number": "R-3", "institution": "Museum B"},
                                        [PhotoInput(jpeg_bytes(random_photo(9)))])
        assert new.id == 5 and new.photos[0].id == 6  # after the deleted 3 and 4: never given again
    finally:
        service.close()


# --- where a database stands ------------------------------------------------------------------------------------


@pytest.mark.databases
def test_db_current_and_upgrade_say_where_the_database_stands(tmp_path, monkeypatch, db_env, database_url):
    from app.core.config import get_settings

    monkeypatch.setenv("HM_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        head = schema.head()
        if database_url is None:
            assert f"no database yet; `heritage-match db upgrade` creates it at {head}" in _cli("db", "current").stdout
            assert not (tmp_path / "data" / "registry.db").exists()  # `db current` creates nothing
            assert f"created the schema at revision {head}" in _cli("db", "upgrade").stdout
        else:  # a fresh database of the test server is already at the newest revision
            assert "already at revision" in _cli("db", "upgrade").stdout
        said = _cli("db", "current")
        assert said.exit_code == 0 and f"revision: {head} (the newest: up to date)" in said.stdout

        engine = create_engine(get_settings().db_url)
        with engine.connect() as conn:
            command.stamp(schema.alembic_config(conn), schema.revisions()[-2], purge=True)
            conn.commit()
        engine.dispose()
        said = _cli("db", "current")
        assert f"revision: {schema.revisions()[-2]} (behind: this version's newest is {head}" in said.stdout
    finally:
        get_settings.cache_clear()


@pytest.mark.databases
def test_a_database_ahead_of_the_code_is_refused_naming_both_revisions(settings, db_env, monkeypatch):
    from app.core.config import get_settings

    settings.data_dir.mkdir()
    RegistryStore(settings.db_url, settings.data_dir / "photos").close()  # made at the newest revision
    engine = create_engine(settings.db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()

    with pytest.raises(schema.SchemaAhead) as refused:
        RegistryStore(settings.db_url, settings.data_dir / "photos")
    message = refused.value.message
    assert "revision 9999" in message and f"its newest is {schema.head()}" in message

    monkeypatch.setenv("HM_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    try:
        assert "revision: 9999 (ahead: this version's newest is" in _cli("db", "current").stdout
        upgrade = _cli("db", "upgrade")
        assert upgrade.exit_code != 0 and isinstance(upgrade.exception, AppError)
        assert "revision 9999" in upgrade.exception.message
    finally:
        get_settings.cache_clear()


def test_serve_refuses_a_database_ahead_of_it_in_one_line(tmp_path):
    """`heritage-match serve` checks the schema before any worker starts: one line, no traceback."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    data = tmp_path / "data"
    data.mkdir()
    RegistryStore(f"sqlite:///{data / 'registry.db'}", data / "photos").close()
    with sqlite3.connect(data / "registry.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    env = {**os.environ, "HM_DATA_DIR": str(data), "HM_MODEL": "efficientnet-lite0", "HM_PORT": "1"}
    env.pop("HM_DATABASE_URL", None)
    run = subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    said = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 1 and "Traceback" not in said, said
    assert "schema revision 9999" in said and f"its newest is {schema.head()}" in said


def test_tables_of_no_release_are_not_taken_for_a_registry(tmp_path):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE artefacts (id INTEGER PRIMARY KEY)")  # half a registry, of no release
    with pytest.raises(schema.UnknownSchema, match="not those of a release"):
        RegistryStore(f"sqlite:///{db}", tmp_path / "photos")


@pytest.mark.databases
def test_the_append_only_trail_refuses_changes_on_every_database(settings):
    settings.data_dir.mkdir()
    store = RegistryStore(settings.db_url, settings.data_dir / "photos")
    try:
        from app.security.audit import AuditLog

        AuditLog(store.sessions).record("test", details={"n": 1})
        for statement in ("UPDATE audit_events SET action = 'other'", "DELETE FROM audit_events"):
            with pytest.raises(IntegrityError, match="append-only"):
                with store.engine.begin() as conn:
                    conn.execute(text(statement))
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT action FROM audit_events")).scalars().all() == ["test"]
    finally:
        store.close()
