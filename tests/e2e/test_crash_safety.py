"""Crash safety: a SIGKILL in the middle of an import leaves no half-registered artefact, no orphan
photo file, and every committed artefact searchable after a restart."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.core.config import Settings
from app.registry.store import ArtefactFilter, RegistryStore
from app.service import MatchingService, PhotoInput
from tests.conftest import ROOT, jpeg_bytes, random_photo

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases

ARTEFACTS = 100
PHOTOS_EACH = 3  # 300 photos in all
MIN_COMMITTED = 6  # artefacts each try commits before its kill may land


def _stored_files(store: RegistryStore) -> set[Path]:
    return {p for p in store.photos.root.glob("??/*")}


def _referenced_files(store: RegistryStore) -> set[Path]:
    with store.sessions() as s:
        from sqlalchemy import select

        from app.registry.models import Photo

        return {store.photos.path_for(sha, fmt) for sha, fmt in s.execute(select(Photo.sha256, Photo.format))}


def test_orphan_and_temp_files_are_removed_at_start(service, settings, encoder):
    kept = service.register_artefact({"inventory_number": "K-1"}, [PhotoInput(jpeg_bytes(random_photo(1)))])
    # What a crash between writing the files and committing the rows leaves behind:
    orphan_data = jpeg_bytes(random_photo(2))
    from app.core.files import sha256_hex

    orphan = service.store.photos.put(orphan_data, sha256_hex(orphan_data), "JPEG")
    temp = orphan.parent / ".tmp-half-written.jpg.x1"
    temp.write_bytes(b"\xff\xd8partial")
    restarted = MatchingService(settings, encoder=encoder).start()
    try:
        assert not orphan.exists() and not temp.exists()
        assert _stored_files(restarted.store) == _referenced_files(restarted.store)
        assert restarted.store.photos.path_for(kept.photos[0].sha256, "JPEG").exists()
    finally:
        restarted.close()


def test_clean_up_never_takes_a_file_whose_writer_has_not_committed_yet(service, settings):
    data = jpeg_bytes(random_photo(3))
    from app.core.files import sha256_hex

    writing = threading.Event()
    release = threading.Event()

    def writer():  # holds the write lock between its file and its commit, as registration does
        with service.store.photo_writes():
            service.store.photos.put(data, sha256_hex(data), "JPEG")
            writing.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    writing.wait(10)
    other = RegistryStore(settings.db_url, settings.data_dir / "photos")
    try:
        assert other.remove_orphan_files(wait_s=0.3) == 0  # busy: left for later, not deleted
        assert service.store.photos.path_for(sha256_hex(data), "JPEG").exists()
        release.set()
        t.join()
        assert other.remove_orphan_files() == 1  # no row ever came: now it is an orphan
    finally:
        release.set()
        other.close()


def _manifest(folder: Path) -> Path:
    lines = []
    for a in range(ARTEFACTS):
        names = []
        for p in range(PHOTOS_EACH):
            name = f"a{a:03d}_{p}.jpg"
            (folder / name).write_bytes(jpeg_bytes(random_photo(1000 + a * PHOTOS_EACH + p, (96, 72)), quality=85))
            names.append(name)
        lines.append(json.dumps({"inventory_number": f"CR-{a:03d}", "title": f"crash test {a}", "photos": names}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _db_state(data_dir: Path, database_url: str | None = None) -> tuple[int, set[str]]:
    """(committed artefacts, photo files that no committed row references), read from outside: the SQLite file
    in the data directory, or the PostgreSQL database ``database_url`` names."""
    files = [p.name for p in (data_dir / "photos").glob("??/*")]
    if database_url is not None:
        import psycopg

        try:
            with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as pg:
                row = pg.execute("SELECT count(*) FROM artefacts").fetchone()
                count = row[0] if row else 0
                shas = {sha for (sha,) in pg.execute("SELECT sha256 FROM photos")}
        except psycopg.Error:  # the tables are not there yet
            return 0, set()
        return count, {f for f in files if f.startswith(".tmp-") or f.split(".")[0] not in shas}
    try:
        with sqlite3.connect(f"file:{data_dir / 'registry.db'}?mode=ro", uri=True, timeout=1) as conn:
            count = conn.execute("SELECT count(*) FROM artefacts").fetchone()[0]
            shas = {sha for (sha,) in conn.execute("SELECT sha256 FROM photos")}
    except sqlite3.Error:
        return 0, set()
    return count, {f for f in files if f.startswith(".tmp-") or f.split(".")[0] not in shas}


def _import_until_killed_between_files_and_commit(manifest: Path, data_dir: Path, cwd: Path,
                                                  database_url: str | None = None) -> int:
    """Run the import and SIGKILL it when photo files are written but their rows not yet committed.

    The window is a few milliseconds per artefact, so a try may kill just after the commit; it is
    then run again (the import resumes: committed rows are unchanged) until a kill leaves orphans.
    """
    env = {**os.environ, "HM_DATA_DIR": str(data_dir), "HM_MODEL": "efficientnet-lite0", "HM_DEVICE": "cpu",
           "HM_TORCH_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HM_DATABASE_URL", None)
    if database_url is not None:
        env["HM_DATABASE_URL"] = database_url
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "registry", "import", str(manifest)], env=env,
                                cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            start_count = _db_state(data_dir, database_url)[0]
            while True:
                count, orphans = _db_state(data_dir, database_url)
                if count >= start_count + MIN_COMMITTED and orphans:
                    break
                assert proc.poll() is None, "the import ended before a kill landed mid-registration"
                assert time.monotonic() < deadline, "the import made no progress"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        if _db_state(data_dir, database_url)[1]:
            return attempt + 1
    raise AssertionError("no kill landed between writing photo files and committing their rows")


@pytest.mark.timeout(300)
def test_sigkill_during_a_300_photo_import(tmp_path, encoder, database_url):
    photos = tmp_path / "photos"
    photos.mkdir()
    manifest = _manifest(photos)
    data_dir = tmp_path / "data"
    _import_until_killed_between_files_and_commit(manifest, data_dir, tmp_path, database_url)
    assert _db_state(data_dir, database_url)[1], "the kill left orphan files for the restart to clean"

    settings = Settings(data_dir=data_dir, model="efficientnet-lite0", device="cpu", rate_limit_per_minute=0,
                        auth_failures_per_minute=0, database_url=database_url)
    service = MatchingService(settings, encoder=encoder).start()  # the restart
    try:
        artefacts, total = service.store.list_artefacts(ArtefactFilter(), 0, ARTEFACTS)
        assert MIN_COMMITTED <= total < ARTEFACTS, f"{total} artefacts: the kill did not land mid-import"
        # No half-registered artefact: each committed one has all its photos, files and vectors.
        assert all(len(a.photos) == PHOTOS_EACH for a in artefacts)
        photo_ids = sorted(p.id for a in artefacts for p in a.photos)
        assert service.store.vector_ids(service.fingerprint).tolist() == photo_ids
        assert sorted(service.index.ids().tolist()) == photo_ids  # the index caught up with the database
        # No orphan photo file, no half-written temp file.
        assert _stored_files(service.store) == _referenced_files(service.store)
        # Searchable: the first, a middle and the last committed artefact are found by their photos.
        for a in (artefacts[0], artefacts[len(artefacts) // 2], artefacts[-1]):
            n = int(a.inventory_number.split("-")[1])
            query = (photos / f"a{n:03d}_1.jpg").read_bytes()
            assert service.search(query, top_k=3).results[0].artefact_id == a.id
    finally:
        service.close()


def test_a_deleted_records_ids_are_never_given_again(service):
    first = service.register_artefact({"inventory_number": "GONE-1"}, [PhotoInput(jpeg_bytes(random_photo(1)))])
    service.delete_artefact(first.id)
    second = service.register_artefact({"inventory_number": "NEW-1"}, [PhotoInput(jpeg_bytes(random_photo(2)))])
    assert second.id > first.id and second.photos[0].id > first.photos[0].id


@pytest.fixture
def legacy_registry(settings):
    """A registry database made before ids stopped being reused (no AUTOINCREMENT): SQLite gives a new
    row the highest id again once that row is deleted."""
    from sqlalchemy import create_engine

    from app.registry.models import Base

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tables = [Base.metadata.tables["artefacts"], Base.metadata.tables["photos"]]
    for table in tables:
        table.dialect_options["sqlite"]["autoincrement"] = False
    try:
        engine = create_engine(settings.db_url)
        Base.metadata.create_all(engine)
        engine.dispose()
    finally:
        for table in tables:
            table.dialect_options["sqlite"]["autoincrement"] = True
    return settings


@pytest.mark.sqlite_only("a registry made before ids stopped being reused is a SQLite file of an old release: "
                         "PostgreSQL's sequences never gave an id twice")
def test_a_delete_never_unindexes_another_workers_new_photo(legacy_registry, encoder):
    """Worker A deletes an artefact; between A's commit and A's index update, worker B registers one
    whose photo gets the deleted photo's id. B's photo must stay indexed and searchable."""
    a = MatchingService(legacy_registry, encoder=encoder).start()
    b = MatchingService(legacy_registry, encoder=encoder).start()
    try:
        old = a.register_artefact({"inventory_number": "OLD-1"}, [PhotoInput(jpeg_bytes(random_photo(1)))])
        commit_delete = a.store.delete_artefact
        registered = []

        def delete_then_other_worker_registers(artefact_id):
            gone = commit_delete(artefact_id)
            registered.append(b.register_artefact({"inventory_number": "NEW-1"},
                                                  [PhotoInput(jpeg_bytes(random_photo(2)))]))
            return gone

        a.store.delete_artefact = delete_then_other_worker_registers
        a.delete_artefact(old.id)
        new_photo = registered[0].photos[0].id
        assert new_photo == old.photos[0].id  # the legacy database did reuse the id
        assert b.index.ids().tolist() == [new_photo]
        results = b.search(jpeg_bytes(random_photo(2).crop((10, 10, 300, 220)))).results
        assert results and results[0].inventory_number == "NEW-1"
    finally:
        a.close()
        b.close()


def test_reembed_goes_on_when_another_worker_deletes_a_photo_meanwhile(service, settings, encoder):
    from app.registry.models import Embedding

    for i in range(3):
        service.register_artefact({"inventory_number": f"A-{i}"}, [PhotoInput(jpeg_bytes(random_photo(i)))])
    with service.store.sessions.begin() as s:
        s.query(Embedding).delete()  # as after a model switch: no vector for the active model
    other = MatchingService(settings, encoder=encoder).start()
    embed = service.encoder.embed

    def embed_while_a_registrar_deletes(images):
        vectors = embed(images)
        doomed = other.store.find_artefact("", "A-1")
        if doomed is not None:  # the first embedding (the object views are embedded after)
            other.delete_artefact(doomed.id)
        return vectors

    service.encoder.embed = embed_while_a_registrar_deletes
    try:
        report = service.rebuild_index(reembed=True)
    finally:
        service.encoder.embed = embed
        other.close()
    survivors = service.store.photo_ids().tolist()
    assert len(survivors) == 2 and report.embedded == 2 and report.missing == 0
    assert service.store.vector_ids(service.fingerprint).tolist() == survivors
    assert sorted(service.index.ids().tolist()) == survivors


def test_a_photo_sent_again_after_a_model_switch_is_stored_as_it_is_indexed(settings, encoder):
    """`index rebuild` without --reembed, then a photo the artefact already has is uploaded again: its
    new vector goes into the index, so it must go into the database too (or a restart drops it)."""
    import dataclasses

    from app.embedding.models.efficientnet import EfficientNetLiteEncoder

    class Switched(EfficientNetLiteEncoder):  # the same network under another fingerprint: "the new model"
        @property
        def fingerprint(self):
            return dataclasses.replace(super().fingerprint, weights_sha256="new-weights")

    photo = jpeg_bytes(random_photo(1))
    first = MatchingService(settings, encoder=encoder).start()
    artefact = first.register_artefact({"inventory_number": "A-1"}, [PhotoInput(photo)])
    first.close()
    switched = Switched().load()
    second = MatchingService(settings, encoder=switched).start()
    try:
        second.rebuild_index()
        stored = second.add_photos(artefact.id, [PhotoInput(photo)])
        assert [p.id for p in stored] == [artefact.photos[0].id]
        assert second.index.ids().tolist() == second.store.vector_ids(second.fingerprint).tolist() == [stored[0].id]
    finally:
        second.close()
    third = MatchingService(settings, encoder=switched).start()  # the restart reconciles index and registry
    try:
        assert third.index.ids().tolist() == [stored[0].id]
    finally:
        third.close()


def _rows_and_blobs(data_dir: Path, database_url: str | None) -> tuple[int, set[str], set[str]]:
    """(committed artefacts, SHA-256 of the photo rows, SHA-256 of the stored blobs), read from outside as
    ``_db_state`` does."""
    queries = ("SELECT count(*) FROM artefacts", "SELECT sha256 FROM photos", "SELECT sha256 FROM photo_blobs")
    if database_url is not None:
        import psycopg

        try:
            with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as pg:
                row = pg.execute(queries[0]).fetchone()
                return (row[0] if row else 0, {sha for (sha,) in pg.execute(queries[1])},
                        {sha for (sha,) in pg.execute(queries[2])})
        except psycopg.Error:
            return 0, set(), set()
    try:
        with sqlite3.connect(f"file:{data_dir / 'registry.db'}?mode=ro", uri=True, timeout=1) as conn:
            return (conn.execute(queries[0]).fetchone()[0], {sha for (sha,) in conn.execute(queries[1])},
                    {sha for (sha,) in conn.execute(queries[2])})
    except sqlite3.Error:
        return 0, set(), set()


@pytest.mark.timeout(300)
def test_sigkill_during_an_import_into_the_database_photo_store(tmp_path, encoder, database_url):
    """HM_PHOTO_STORE=database: blobs commit with their rows, so a kill at any point leaves every photo row
    with its blob and no blob without a row, even before a restart cleans anything; no photo folder at all."""
    photos = tmp_path / "photos"
    photos.mkdir()
    manifest = _manifest(photos)
    data_dir = tmp_path / "data"
    env = {**os.environ, "HM_DATA_DIR": str(data_dir), "HM_MODEL": "efficientnet-lite0", "HM_DEVICE": "cpu",
           "HM_TORCH_THREADS": "1", "PYTHONPATH": str(ROOT), "HM_PHOTO_STORE": "database"}
    env.pop("HM_DATABASE_URL", None)
    if database_url is not None:
        env["HM_DATABASE_URL"] = database_url
    for kill_after in (MIN_COMMITTED, 2 * MIN_COMMITTED + 1):  # two kills, at different points of the import
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "registry", "import", str(manifest)], env=env,
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while _rows_and_blobs(data_dir, database_url)[0] < kill_after:
                assert proc.poll() is None, "the import ended before the kill"
                assert time.monotonic() < deadline, "the import made no progress"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        count, row_shas, blob_shas = _rows_and_blobs(data_dir, database_url)
        assert count >= kill_after and len(row_shas) == count * PHOTOS_EACH
        assert row_shas == blob_shas  # no row without its bytes, no bytes without a row
    assert not (data_dir / "photos").exists()

    settings = Settings(data_dir=data_dir, model="efficientnet-lite0", device="cpu", rate_limit_per_minute=0,
                        auth_failures_per_minute=0, database_url=database_url, photo_store="database")
    service = MatchingService(settings, encoder=encoder).start()  # the restart: nothing to clean
    try:
        artefacts, total = service.store.list_artefacts(ArtefactFilter(), 0, ARTEFACTS)
        assert 2 * MIN_COMMITTED + 1 <= total < ARTEFACTS, f"{total} artefacts: the kill did not land mid-import"
        assert all(len(a.photos) == PHOTOS_EACH for a in artefacts)
        for a in (artefacts[0], artefacts[-1]):
            n = int(a.inventory_number.split("-")[1])
            query = (photos / f"a{n:03d}_1.jpg").read_bytes()
            assert service.store.photos.read(a.photos[1].sha256, a.photos[1].format) == query
            assert service.search(query, top_k=3).results[0].artefact_id == a.id
    finally:
        service.close()
