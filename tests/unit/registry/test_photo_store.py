"""The database photo store (``HM_PHOTO_STORE=database``): photos' bytes in ``photo_blobs``, written and deleted
in the transaction of their rows, so no shared folder is needed and no crash or failure leaves a stray blob."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import delete, func, select

from app.core.errors import Conflict
from app.core.files import sha256_hex
from app.registry import store as store_module
from app.registry.models import PhotoBlob
from app.registry.photos import DatabasePhotoStore, PhotoStore
from app.registry.store import NewPhoto, RegistryStore
from app.service import MatchingService, PhotoInput
from tests.conftest import jpeg_bytes, random_photo

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases


@pytest.fixture
def db_settings(settings):
    return settings.model_copy(update={"photo_store": "database"})


@pytest.fixture
def db_service(db_settings, encoder):
    svc = MatchingService(db_settings, encoder=encoder).start()
    yield svc
    svc.close()


def blobs(store: RegistryStore) -> dict[str, bytes]:
    with store.sessions() as s:
        return {sha: bytes(data) for sha, data in s.execute(select(PhotoBlob.sha256, PhotoBlob.data))}


def new_photo(data: bytes) -> NewPhoto:
    return NewPhoto(data=data, sha256=sha256_hex(data), format="JPEG", width=320, height=240, vector=None)


def test_the_setting_chooses_the_backend(settings, db_service):
    assert isinstance(db_service.store.photos, DatabasePhotoStore)
    files = RegistryStore(settings.db_url, settings.data_dir / "photos")  # the default: files
    try:
        assert isinstance(files.photos, PhotoStore)
    finally:
        files.close()
    with pytest.raises(ValueError, match="photo_store"):
        RegistryStore(settings.db_url, settings.data_dir / "photos", "s3")  # type: ignore[arg-type]


def test_registered_photos_live_in_the_database_and_read_back_the_same(db_service, db_settings):
    sent = [jpeg_bytes(random_photo(1)), jpeg_bytes(random_photo(2))]
    artefact = db_service.register_artefact({"inventory_number": "D-1"}, [PhotoInput(d) for d in sent])
    assert not (db_settings.data_dir / "photos").exists()  # no folder, no lock file: nothing to share
    assert blobs(db_service.store) == {sha256_hex(d): d for d in sent}
    for photo, data in zip(artefact.photos, sent):
        assert db_service.store.photos.read(photo.sha256, photo.format) == data
        assert db_service.store.photos.has(photo.sha256, photo.format)
        assert db_service.store.photos.media_type(photo.format) == "image/jpeg"
    # A new process (another replica) reads them from the database, not from a cache.
    other = RegistryStore(db_settings.db_url, db_settings.data_dir / "elsewhere", photo_store="database")
    try:
        assert other.photos.read(artefact.photos[0].sha256, "JPEG") == sent[0]
        missing = "0" * 64
        assert not other.photos.has(missing, "JPEG")
        with pytest.raises(FileNotFoundError):  # an OSError: readers already treat it as "photo unavailable"
            other.photos.read(missing, "JPEG")
    finally:
        other.close()


def test_a_photo_shared_by_two_artefacts_is_stored_once_and_goes_with_its_last_row(db_service):
    shared = jpeg_bytes(random_photo(3))
    own = jpeg_bytes(random_photo(4))
    first = db_service.register_artefact({"inventory_number": "S-1"}, [PhotoInput(shared), PhotoInput(own)])
    second = db_service.register_artefact({"inventory_number": "S-2"}, [PhotoInput(shared)])
    assert sorted(blobs(db_service.store)) == sorted({sha256_hex(shared), sha256_hex(own)})

    db_service.delete_artefact(first.id)
    assert list(blobs(db_service.store)) == [sha256_hex(shared)]  # still S-2's
    assert db_service.store.photos.read(second.photos[0].sha256, "JPEG") == shared
    with pytest.raises(FileNotFoundError):
        db_service.store.photos.read(sha256_hex(own), "JPEG")

    db_service.delete_artefact(second.id)
    assert blobs(db_service.store) == {}
    with pytest.raises(FileNotFoundError):  # not served from the read cache either
        db_service.store.photos.read(sha256_hex(shared), "JPEG")


def test_adding_photos_stores_new_bytes_once(db_service):
    first = jpeg_bytes(random_photo(5))
    artefact = db_service.register_artefact({"inventory_number": "P-1"}, [PhotoInput(first)])
    later = jpeg_bytes(random_photo(6))
    db_service.add_photos(artefact.id, [PhotoInput(later), PhotoInput(first)])  # `first` again: no new row
    assert blobs(db_service.store) == {sha256_hex(first): first, sha256_hex(later): later}
    assert len(db_service.store.get_artefact(artefact.id).photos) == 2


def test_a_duplicate_inventory_number_leaves_no_blob(db_service):
    kept = jpeg_bytes(random_photo(7))
    db_service.register_artefact({"inventory_number": "C-1", "institution": "X"}, [PhotoInput(kept)])
    with pytest.raises(Conflict):
        db_service.register_artefact({"inventory_number": "C-1", "institution": "X"},
                                     [PhotoInput(jpeg_bytes(random_photo(8)))])
    assert list(blobs(db_service.store)) == [sha256_hex(kept)]


def test_a_failure_after_the_blobs_are_written_leaves_none(db_service, monkeypatch):
    def fail_after_blobs(s, artefact, photos, fingerprint):
        written = s.scalar(select(func.count()).select_from(PhotoBlob).where(PhotoBlob.sha256 == photos[0].sha256))
        assert written == 1  # the blob is there, inside the transaction
        raise RuntimeError("injected: a failure between blobs and rows")

    artefact = db_service.register_artefact({"inventory_number": "F-1"}, [PhotoInput(jpeg_bytes(random_photo(9)))])
    before = blobs(db_service.store)
    monkeypatch.setattr(db_service.store, "_attach_photos", fail_after_blobs)
    with pytest.raises(RuntimeError, match="injected"):
        db_service.register_artefact({"inventory_number": "F-2"}, [PhotoInput(jpeg_bytes(random_photo(10)))])
    with pytest.raises(RuntimeError, match="injected"):
        db_service.add_photos(artefact.id, [PhotoInput(jpeg_bytes(random_photo(11)))])
    assert blobs(db_service.store) == before
    assert db_service.store.count_artefacts() == 1


def test_search_reads_registry_photos_from_the_database(db_service, monkeypatch):
    for i in range(4):
        db_service.register_artefact({"inventory_number": f"Q-{i}"}, [PhotoInput(jpeg_bytes(random_photo(20 + i)))])
    reads = []
    read = db_service.store.photos.read
    monkeypatch.setattr(db_service.store.photos, "read", lambda sha, fmt: reads.append(sha) or read(sha, fmt))
    # A crop, so the search goes past the exact re-use check to embedding and verification.
    results = db_service.search(jpeg_bytes(random_photo(22).crop((20, 10, 300, 230)), quality=95)).results
    assert results[0].inventory_number == "Q-2"
    assert reads, "verification read no registry photo: this test no longer covers the read path"


def test_reads_are_one_primary_key_select_then_cached(db_service):
    data = jpeg_bytes(random_photo(30))
    db_service.register_artefact({"inventory_number": "R-1"}, [PhotoInput(data)])
    from sqlalchemy import event

    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(db_service.store.engine, "before_cursor_execute", seen)
    try:
        fresh = DatabasePhotoStore(db_service.store.sessions)
        assert fresh.read(sha256_hex(data), "JPEG") == data
        assert fresh.read(sha256_hex(data), "JPEG") == data
    finally:
        event.remove(db_service.store.engine, "before_cursor_execute", seen)
    selects = [s for s in statements if "photo_blobs" in s]
    assert len(selects) == 1 and "WHERE photo_blobs.sha256 =" in selects[0]


def test_the_read_cache_stays_within_its_budget(db_service):
    photos = [jpeg_bytes(random_photo(40 + i)) for i in range(6)]
    db_service.register_artefact({"inventory_number": "L-1"}, [PhotoInput(d) for d in photos])
    budget = 8 * max(len(d) for d in photos)  # room for a few: one photo is at most 1/8 of the budget
    small = DatabasePhotoStore(db_service.store.sessions, cache_bytes=budget)
    for data in photos:
        assert small.read(sha256_hex(data), "JPEG") == data
    assert small._cached_bytes <= budget and 0 < len(small._cache) < len(photos) + 1
    assert sum(len(d) for d in small._cache.values()) == small._cached_bytes


def test_orphan_blobs_are_removed_at_start(db_service, db_settings, encoder):
    kept = jpeg_bytes(random_photo(50))
    db_service.register_artefact({"inventory_number": "O-1"}, [PhotoInput(kept)])
    orphan = jpeg_bytes(random_photo(51))
    with db_service.store.sessions.begin() as s:  # as `db move-photos` copying a photo deleted meanwhile leaves
        db_service.store.photos.add(s, [(sha256_hex(orphan), "JPEG", orphan)])
    assert len(blobs(db_service.store)) == 2
    restarted = MatchingService(db_settings, encoder=encoder).start()
    try:
        assert list(blobs(restarted.store)) == [sha256_hex(kept)]
        assert restarted.store.remove_orphan_files() == 0
    finally:
        restarted.close()


def test_a_delete_waits_for_a_registration_of_the_same_photo_and_keeps_its_blob(db_service, monkeypatch):
    """Deleting the last artefact with a photo while another transaction registers that photo again (blob
    already there, its rows not yet committed): the delete must see those rows and keep the blob."""
    store = db_service.store
    shared = jpeg_bytes(random_photo(60))
    old = store.create_artefact({"inventory_number": "OLD"}, [new_photo(shared)], None)
    blob_written, go_on = threading.Event(), threading.Event()
    attach = store._attach_photos

    def attach_slowly(*args, **kwargs):
        blob_written.set()
        go_on.wait(20)
        return attach(*args, **kwargs)

    monkeypatch.setattr(store, "_attach_photos", attach_slowly)
    created = []
    registering = threading.Thread(target=lambda: created.append(
        store.create_artefact({"inventory_number": "NEW"}, [new_photo(shared)], None)))
    registering.start()
    try:
        assert blob_written.wait(20)
        deleting = threading.Thread(target=store.delete_artefact, args=(old.id,))
        deleting.start()
        time.sleep(0.5)  # the delete is now waiting for the registration (its blob lock, or SQLite's writer lock)
    finally:
        go_on.set()
        registering.join(30)
    deleting.join(30)
    assert created and not deleting.is_alive()
    assert list(blobs(store)) == [sha256_hex(shared)]
    assert store.photos.read(created[0].photos[0].sha256, "JPEG") == shared


def test_a_registration_waits_for_a_delete_of_the_same_photo_and_stores_it_again(db_service, monkeypatch):
    """The other order: the delete has removed the blob but not committed yet; a registration of the same
    photo waits for it, then stores the blob again."""
    store = db_service.store
    shared = jpeg_bytes(random_photo(61))
    old = store.create_artefact({"inventory_number": "OLD"}, [new_photo(shared)], None)
    blob_deleted, go_on = threading.Event(), threading.Event()
    record_change = store_module.record_change

    def record_change_slowly(s, kind, *args, **kwargs):
        if kind == store_module.PHOTOS_REMOVED:
            blob_deleted.set()
            go_on.wait(20)
        return record_change(s, kind, *args, **kwargs)

    monkeypatch.setattr(store_module, "record_change", record_change_slowly)
    deleting = threading.Thread(target=store.delete_artefact, args=(old.id,))
    deleting.start()
    created = []
    try:
        assert blob_deleted.wait(20)
        registering = threading.Thread(target=lambda: created.append(
            store.create_artefact({"inventory_number": "NEW"}, [new_photo(shared)], None)))
        registering.start()
        time.sleep(0.5)  # the registration is now waiting for the delete
    finally:
        go_on.set()
        deleting.join(30)
    registering.join(30)
    assert created and not registering.is_alive()
    assert list(blobs(store)) == [sha256_hex(shared)]
    assert store.photos.read(created[0].photos[0].sha256, "JPEG") == shared


def test_export_writes_the_photos_bytes(db_service, tmp_path):
    from app.jobs.manifest import export_manifest

    data = jpeg_bytes(random_photo(70))
    db_service.register_artefact({"inventory_number": "E-1"}, [PhotoInput(data)])
    assert export_manifest(db_service, tmp_path / "out" / "registry.jsonl") == 1
    assert (tmp_path / "out" / "photos" / f"{sha256_hex(data)}.jpg").read_bytes() == data


def move_photos(to: str):
    """``heritage-match db move-photos --to TO`` (app.cli.db), configured by the environment."""
    import typer
    from typer.testing import CliRunner

    from app.cli import db
    from app.core.config import get_settings

    cli = typer.Typer()
    cli.command()(db.db_move_photos)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["--to", to])
    finally:
        get_settings.cache_clear()
    counts = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None
    return result, counts


def test_move_photos_copies_between_the_stores_checks_them_and_deletes_nothing(settings, encoder, db_env,
                                                                               monkeypatch):
    monkeypatch.setenv("HM_DATA_DIR", str(settings.data_dir))
    sent = [jpeg_bytes(random_photo(80 + i)) for i in range(3)]
    with_files = MatchingService(settings, encoder=encoder).start()
    try:
        with_files.register_artefact({"inventory_number": "M-1"}, [PhotoInput(sent[0]), PhotoInput(sent[1])])
        with_files.register_artefact({"inventory_number": "M-2"}, [PhotoInput(sent[0]), PhotoInput(sent[2])])
        store = with_files.store
        assert isinstance(store.photos, PhotoStore) and len(store.photos.all_files()) == 3

        result, counts = move_photos("database")
        assert result.exit_code == 0, result.output
        assert counts == {"to": "database", "photos": 3, "copied": 3, "already_there": 0, "missing": 0, "corrupt": 0}
        assert blobs(store) == {sha256_hex(d): d for d in sent}
        assert len(store.photos.all_files()) == 3  # the source is unchanged

        result, counts = move_photos("database")  # again: nothing left to copy
        assert result.exit_code == 0 and counts["copied"] == 0 and counts["already_there"] == 3

        # Back to files: only what the folder lacks is copied, from the database's bytes.
        lost = store.photos.path_for(sha256_hex(sent[2]), "JPEG")
        lost.unlink()
        result, counts = move_photos("files")
        assert result.exit_code == 0 and counts["copied"] == 1 and counts["already_there"] == 2
        assert lost.read_bytes() == sent[2]

        # A source photo whose bytes do not match its SHA-256 is reported, not copied.
        with store.sessions.begin() as s:
            s.execute(delete(PhotoBlob).where(PhotoBlob.sha256 == sha256_hex(sent[1])))
        store.photos.path_for(sha256_hex(sent[1]), "JPEG").write_bytes(b"\xff\xd8 not the registered photo")
        result, counts = move_photos("database")
        assert result.exit_code == 1 and counts["corrupt"] == 1 and counts["copied"] == 0
        assert "does not match its SHA-256" in result.output
        assert sha256_hex(sent[1]) not in blobs(store)
    finally:
        with_files.close()

    with_database = MatchingService(settings.model_copy(update={"photo_store": "database"}), encoder=encoder).start()
    try:
        results = with_database.search(jpeg_bytes(random_photo(82).crop((20, 10, 300, 230)), quality=95)).results
        assert results[0].inventory_number == "M-2"
    finally:
        with_database.close()
