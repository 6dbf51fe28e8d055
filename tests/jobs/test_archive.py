"""The listings archive's index and its facade: exact while small, IVF-PQ re-ranked exactly above the
threshold with recall@10 >= 0.95 against exact search, saved and shared between processes, rebuilt for
another model; ListingArchive records a listing photo with a downsized private copy and finds it again."""

from __future__ import annotations

import datetime as dt
import io
import stat
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from app.core.config import Settings
from app.core.files import private_data_dir, sha256_hex
from app.jobs.archive import ListingArchive, ListingPhoto
from app.pipeline.archive_index import ARCHIVE_FILE, MIN_RECALL, ArchiveIndex, SharedArchiveIndex, subquantizers
from app.pipeline.decode import decode_image
from app.registry.archive import ArchivePhoto, ArchiveStore, ArchiveVector, ListingFacts
from app.registry.store import RegistryStore

DIM = 64
FP = "test-model@1"
T0 = dt.datetime(2024, 1, 1)


def clustered(rng, n, dim=DIM):
    centres = rng.standard_normal((max(1, n // 20), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def near(rng, vecs):
    q = vecs + 0.5 / np.sqrt(vecs.shape[1]) * rng.standard_normal(vecs.shape).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def recall_at_10(found_ids, ids, vecs, queries):
    truth = ids[np.argsort(-(queries @ vecs.T), axis=1)[:, :10]]
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found_ids)]))


@pytest.fixture
def registry(tmp_path):
    data = private_data_dir(tmp_path / "data")
    store = RegistryStore(f"sqlite:///{data / 'registry.db'}", data / "photos")
    yield store
    store.close()


@pytest.fixture
def archive_store(registry, tmp_path):
    return ArchiveStore(registry.sessions, tmp_path / "data" / "archive")


def bulk(store: ArchiveStore, vecs: np.ndarray, fingerprint: str = FP, first: int = 0) -> np.ndarray:
    """Archive photos with vectors, straight into the tables (no files: the index needs none)."""
    with store.sessions.begin() as s:
        rows = [ArchivePhoto(sha256=sha256_hex(f"p{first + i}".encode()), format="JPEG", width=1, height=1,
                             copy_sha256="0" * 64, first_seen=T0, last_seen=T0, times_seen=1) for i in range(len(vecs))]
        s.add_all(rows)
        s.flush()
        s.add_all([ArchiveVector(photo_id=r.id, model_fingerprint=fingerprint, dim=vecs.shape[1],
                                 vector=np.asarray(v, "<f4").tobytes()) for r, v in zip(rows, vecs)])
        return np.asarray([r.id for r in rows], np.int64)


# --- the index ---------------------------------------------------------------------------------------


def test_small_archives_are_searched_exactly(archive_store, tmp_path):
    vecs = clustered(np.random.default_rng(1), 600)
    ids = bulk(archive_store, vecs)
    shared = SharedArchiveIndex(tmp_path / "data", archive_store, FP, DIM, ann_min_vectors=1_000)
    index = shared.index()
    assert index.kind == "flat" and index.count == 600 and index.seq == archive_store.last_vector_seq(FP)
    queries = near(np.random.default_rng(2), vecs[:40])
    scores, found = shared.search(queries, 10)
    assert recall_at_10(found, ids, vecs, queries) == 1.0
    np.testing.assert_allclose(scores[:, 0], np.max(queries @ vecs.T, axis=1), atol=1e-5)


@pytest.fixture
def compressed(archive_store, tmp_path):
    vecs = clustered(np.random.default_rng(3), 3_000)
    ids = bulk(archive_store, vecs)
    shared = SharedArchiveIndex(tmp_path / "data", archive_store, FP, DIM, ann_min_vectors=1_000)
    return ids, vecs, shared, shared.index()


def test_large_archives_are_ivf_pq_with_recall_against_exact_search(compressed):
    ids, vecs, shared, index = compressed
    assert index.kind == "ivfpq" and index.count == 3_000 and index.rerank in (10, 20, 40, 80)
    assert index.recall is not None and index.recall >= MIN_RECALL and index.nprobe >= 1
    assert subquantizers(DIM) == 16 and subquantizers(512) == 128 and subquantizers(1280) == 320
    assert subquantizers(100) == 25 and subquantizers(1) == 1
    # fresh queries, not the build's sample
    queries = near(np.random.default_rng(4), vecs[np.random.default_rng(5).integers(0, len(vecs), 300)])
    scores, found = shared.search(queries, 10)
    assert recall_at_10(found, ids, vecs, queries) >= MIN_RECALL
    # re-ranked exactly: the scores are the cosines a flat index gives
    exact = queries @ vecs.T
    np.testing.assert_allclose(scores[:, 0], exact.max(axis=1), atol=1e-5)
    assert index.memory_bytes() < vecs.nbytes / 2  # codes, not float32 vectors


def test_the_index_is_saved_and_another_process_loads_it(compressed, archive_store, tmp_path):
    ids, vecs, shared, index = compressed
    assert (tmp_path / "data" / ARCHIVE_FILE).exists()
    assert stat.S_IMODE((tmp_path / "data" / ARCHIVE_FILE).stat().st_mode) == 0o600
    other = SharedArchiveIndex(tmp_path / "data", archive_store, FP, DIM, ann_min_vectors=1_000)
    loaded = other.index()
    assert loaded is not index and loaded.kind == "ivfpq" and loaded.count == 3_000
    assert (loaded.nprobe, loaded.rerank, loaded.seq) == (index.nprobe, index.rerank, index.seq)
    queries = near(np.random.default_rng(6), vecs[:20])
    np.testing.assert_array_equal(other.search(queries, 10)[1], shared.search(queries, 10)[1])

    # Vectors stored by one process are found by the other before any save...
    new = clustered(np.random.default_rng(7), 5)
    new_ids = bulk(archive_store, new, first=10_000)
    _, found = other.search(new, 1)
    assert list(found[:, 0]) == list(new_ids)
    _, found = shared.search(new, 1)
    assert list(found[:, 0]) == list(new_ids)
    # ...and removals are saved so that every process sees them.
    assert shared.remove(new_ids[:2]) == 2
    _, found = other.search(new[:2], 3)
    assert not set(found.ravel()) & set(new_ids[:2])


def test_a_flat_index_grows_into_ivf_pq(archive_store, tmp_path):
    vecs = clustered(np.random.default_rng(8), 1_300)
    ids = bulk(archive_store, vecs[:900])
    shared = SharedArchiveIndex(tmp_path / "data", archive_store, FP, DIM, ann_min_vectors=1_000, save_every=10_000)
    assert shared.index().kind == "flat"
    ids = np.concatenate([ids, bulk(archive_store, vecs[900:], first=900)])
    index = shared.index()  # catches up the 400 new vectors, and compresses at 1,000
    assert index.kind == "ivfpq" and index.count == 1_300
    queries = near(np.random.default_rng(9), vecs[:100])
    assert recall_at_10(shared.search(queries, 10)[1], ids, vecs, queries) >= MIN_RECALL


def test_an_index_of_another_model_is_rebuilt_for_the_active_one(archive_store, tmp_path):
    a = clustered(np.random.default_rng(10), 200)
    bulk(archive_store, a, fingerprint="old@1")
    SharedArchiveIndex(tmp_path / "data", archive_store, "old@1", DIM).index()
    b_ids = bulk(archive_store, clustered(np.random.default_rng(11), 50, dim=32), fingerprint="new@2", first=200)
    # a restart with another model (and dimension): the saved index is not searched, it is rebuilt
    index = SharedArchiveIndex(tmp_path / "data", archive_store, "new@2", 32).index()
    assert index.fingerprint == "new@2" and index.dim == 32 and sorted(index.ids()) == sorted(b_ids)
    assert ArchiveIndex.load(tmp_path / "data").fingerprint == "new@2"


def test_a_saved_index_out_of_step_is_repaired_at_start(archive_store, registry, tmp_path):
    vecs = clustered(np.random.default_rng(12), 300)
    ids = bulk(archive_store, vecs)
    SharedArchiveIndex(tmp_path / "data", archive_store, FP, DIM).index()
    with archive_store.sessions.begin() as s:  # a purge whose index update never ran (a crash)
        s.query(ArchiveVector).filter(ArchiveVector.photo_id.in_([int(i) for i in ids[:3]])).delete()
    index = SharedArchiveIndex(tmp_path / "data", archive_store, FP, DIM).index()
    assert index.count == 297 and not set(index.ids()) & set(ids[:3])


def test_a_damaged_index_file_is_rebuilt(archive_store, tmp_path):
    bulk(archive_store, clustered(np.random.default_rng(13), 100))
    SharedArchiveIndex(tmp_path / "data", archive_store, FP, DIM).index()
    (tmp_path / "data" / ARCHIVE_FILE).write_bytes(b"not an index")
    assert SharedArchiveIndex(tmp_path / "data", archive_store, FP, DIM).index().count == 100


def test_a_tiny_threshold_still_keeps_a_few_vectors_exact():
    vecs = clustered(np.random.default_rng(16), 50)
    index = ArchiveIndex.build(FP, np.arange(50), vecs, DIM, ann_min_vectors=10)  # PQ cannot train on 50
    assert index.kind == "flat"
    index.add(np.arange(50, 60), clustered(np.random.default_rng(17), 10))
    assert index.kind == "flat" and index.count == 60


def test_an_index_built_in_memory_re_ranks_from_its_arrays():
    vecs = clustered(np.random.default_rng(14), 2_000)
    ids = np.arange(2_000, dtype=np.int64) * 7 + 3
    index = ArchiveIndex.build(FP, ids, vecs, DIM, ann_min_vectors=1_000)
    assert index.kind == "ivfpq"
    queries = near(np.random.default_rng(15), vecs[:100])
    assert recall_at_10(index.search(queries, 10)[1], ids, vecs, queries) >= MIN_RECALL


# --- the facade ------------------------------------------------------------------------------------


def photo_bytes(seed: int, size=(1600, 1200)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def make_archive(registry, tmp_path):
    def make(**changes) -> ListingArchive:
        settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", **changes)
        return ListingArchive(settings, registry.sessions, FP, DIM)

    return make


def test_a_recorded_listing_photo_is_found_by_its_vector(make_archive, tmp_path):
    archive = make_archive()
    data = photo_bytes(1)
    decoded = decode_image(data, min_side=None)
    listing = ListingFacts("L-7", platform="shop", url="https://shop.example/7", title="Bronze coin", source="d.jsonl")
    recorded = archive.record_listing_photo(listing, decoded, unit(1) * 3.0, data=data)  # normalised on the way in
    assert recorded.new_photo and recorded.vector_added
    for n in range(2, 6):  # other listings
        archive.record_listing_photo(ListingFacts(f"L-{n}"), decode_image(photo_bytes(n)), unit(n))

    [hits] = archive.search(unit(1)[None, :], 3)
    assert hits[0].photo_id == recorded.photo_id and hits[0].score == pytest.approx(1.0, abs=1e-5)
    [seen] = archive.listings_of(hits[0].photo_id)
    assert seen.listing.url == "https://shop.example/7" and seen.listing.source == "d.jsonl"

    # the copy: downsized to archive_copy_px, private; the full photo not kept (archive_keep_full off)
    copy = Image.open(io.BytesIO(archive.copy_bytes(recorded.photo_id)))
    assert copy.format == "JPEG" and max(copy.size) == 800 and copy.size == (800, 600)
    kept = archive.store.photo(recorded.photo_id)
    assert (kept.width, kept.height) == (1600, 1200) and not kept.has_full
    path = archive.store.copy_path(kept)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.parent.parent == tmp_path / "data" / "archive"
    assert archive.store.full_bytes(recorded.photo_id) is None

    # another process (a server worker) finds it too, before any save
    other = make_archive()
    assert other.search(unit(1)[None, :], 1)[0][0].photo_id == recorded.photo_id
    archive.close()
    assert other.status()["index"]["count"] == 5


def test_a_listing_seen_in_two_dumps_is_one_entry_seen_twice(make_archive):
    archive = make_archive(archive_keep_full=True, archive_copy_px=256)
    data = photo_bytes(1)
    photos = [ListingPhoto(decode_image(data), unit(1), data), ListingPhoto(decode_image(photo_bytes(2)), unit(2))]
    listing = ListingFacts("L-1", platform="shop")
    first = archive.record_listing(listing, photos, source="monday.jsonl", seen_at=T0)
    again = archive.record_listing(listing, photos, source="tuesday.jsonl", seen_at=T0 + dt.timedelta(days=1))
    assert [r.photo_id for r in first] == [r.photo_id for r in again] and not any(r.new_photo for r in again)
    assert archive.store.counts() == {"photos": 2, "listings": 1, "sightings": 2, "vectors": 2}
    [seen] = archive.listings_of(first[0].photo_id)
    assert seen.listing.times_seen == 2 and seen.times_seen == 2 and seen.listing.source == "tuesday.jsonl"
    assert archive.known_listing("shop", "L-1") and not archive.known_listing("", "L-1")
    assert archive.store.full_bytes(first[0].photo_id) == data  # archive_keep_full on
    assert max(Image.open(io.BytesIO(archive.copy_bytes(first[0].photo_id))).size) == 256


def test_purge_applies_the_retention_to_rows_files_and_index(make_archive):
    archive = make_archive(archive_retention_days=30)
    old = archive.record_listing_photo(ListingFacts("old"), decode_image(photo_bytes(1)), unit(1), seen_at=T0)
    kept = archive.record_listing_photo(ListingFacts("alerted"), decode_image(photo_bytes(2)), unit(2), seen_at=T0)
    new = archive.record_listing_photo(ListingFacts("new"), decode_image(photo_bytes(3)), unit(3),
                                       seen_at=T0 + dt.timedelta(days=60))
    report = archive.purge(now=T0 + dt.timedelta(days=61), keep_photo_ids={kept.photo_id})
    assert report.photo_ids == [old.photo_id] and report.listings == 1 and report.files == 1
    hits = archive.search(np.stack([unit(1), unit(2), unit(3)]), 3)
    assert all(h.photo_id != old.photo_id for row in hits for h in row)
    assert hits[1][0].photo_id == kept.photo_id and hits[2][0].photo_id == new.photo_id
    assert archive.rebuild_index().count == 2


def test_threads_record_and_search_at_once(registry, tmp_path):
    import threading

    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    archive = ListingArchive(settings, registry.sessions, FP, DIM, save_every=7)  # saves while others write
    decoded = decode_image(photo_bytes(1, size=(64, 48)))
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for n in range(25):
                seed = 1000 * t + n
                photo = decode_image(photo_bytes(seed, size=(64, 48))) if n % 5 == 0 else decoded
                # each "photo" gets its own bytes identity: the vector is what the index is about
                photo = replace(photo, sha256=sha256_hex(f"{seed}".encode()))
                archive.record_listing_photo(ListingFacts(f"L-{seed}"), photo, unit(seed))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(40):
                archive.search(unit(0)[None, :], 5)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)] + [threading.Thread(target=reader)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert archive.index.index().count == 75 and archive.store.counts()["vectors"] == 75
    probe = [unit(1000 * t + n) for t in range(3) for n in range(25)]
    hits = archive.search(np.stack(probe), 1)
    assert len({row[0].photo_id for row in hits}) == 75
    archive.close()
    assert ArchiveIndex.load(tmp_path / "data").count == 75
