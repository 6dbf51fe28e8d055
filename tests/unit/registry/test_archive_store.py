"""ArchiveStore: a photo seen again is recorded as seen again, never stored twice; vectors per model;
retention purges what was not seen for too long, except the photos kept on purpose."""

from __future__ import annotations

import datetime as dt
import stat

import numpy as np
import pytest

from app.core.files import sha256_hex
from app.registry.archive import ArchivePhoto, ArchiveStore, ListingFacts
from app.registry.store import RegistryStore

T0 = dt.datetime(2024, 1, 1, 12, 0)


@pytest.fixture
def store(tmp_path):
    registry = RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "photos")
    yield ArchiveStore(registry.sessions, tmp_path / "archive")
    registry.close()


def photo(n: int) -> tuple[str, bytes]:
    """A listing photo's SHA-256 and the bytes of its (pretend) downsized copy."""
    data = f"listing photo {n}".encode()
    return sha256_hex(data), b"\xff\xd8copy of " + data


def record(store, listing, n, when, vector=None, fingerprint="m@1", full=None):
    sha, copy = photo(n)
    return store.record(listing, sha, full, copy, 1600, 1200, "JPEG", vector=vector, fingerprint=fingerprint,
                        seen_at=when)


def unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


LISTING = ListingFacts("L-1", platform="shop", url="https://shop.example/l/1", title="Roman coin", seller="s1",
                       price="120.00", currency="EUR", source="dump-1.jsonl")


def test_the_same_photo_in_the_same_listing_twice_is_one_photo_seen_twice(store):
    first = record(store, LISTING, 1, T0, unit(1))
    again = record(store, LISTING, 1, T0 + dt.timedelta(days=3), unit(1))
    assert first.new_photo and first.new_sighting and first.vector_added
    assert again.photo_id == first.photo_id and not again.new_photo and not again.new_sighting
    assert not again.vector_added  # a photo's vector of a model is stored once
    assert store.counts() == {"photos": 1, "listings": 1, "sightings": 1, "vectors": 1}
    stored = store.photo(first.photo_id)
    assert stored.times_seen == 2 and stored.first_seen == T0 and stored.last_seen == T0 + dt.timedelta(days=3)
    [seen] = store.listings_of(first.photo_id)
    assert seen.times_seen == 2 and seen.listing.times_seen == 2 and seen.listing.last_seen == stored.last_seen
    assert len(store.files.all_files()) == 1  # one copy, no full photo (not asked for)


def test_the_same_photo_in_another_listing_is_one_photo_in_two_listings(store):
    other = ListingFacts("L-9", platform="auction", url="https://auction.example/9", title="Coin, Roman?")
    a = record(store, LISTING, 1, T0, unit(1))
    b = record(store, other, 1, T0 + dt.timedelta(hours=5), unit(1))
    assert b.photo_id == a.photo_id and not b.new_photo and b.new_sighting and not b.vector_added
    assert b.listing_row_id != a.listing_row_id
    assert store.counts() == {"photos": 1, "listings": 2, "sightings": 2, "vectors": 1}
    assert store.photo(a.photo_id).times_seen == 2
    seen = store.listings_of(a.photo_id)
    assert [s.listing.url for s in seen] == ["https://auction.example/9", "https://shop.example/l/1"]  # newest first
    assert seen[1].listing.title == "Roman coin" and seen[1].listing.price == "120.00"
    assert store.has_listing("auction", "L-9") == b.listing_row_id and store.has_listing("", "L-9") is None


def test_photos_of_one_visit_count_the_listing_once(store):
    for n in (1, 2, 3):
        record(store, LISTING, n, T0)  # one scan: one seen_at for the listing's photos
    listing = store.listing(store.has_listing("shop", "L-1"))
    assert listing.times_seen == 1 and store.counts()["photos"] == 3
    record(store, ListingFacts("L-1", platform="shop", price="99.00"), 2, T0 + dt.timedelta(days=1))
    listing = store.listing(listing.id)
    assert listing.times_seen == 2 and listing.price == "99.00"  # the listing as last seen
    assert listing.title == "Roman coin"  # not said again: kept


def test_vectors_per_model_and_the_photos_missing_one(store):
    a = record(store, LISTING, 1, T0, unit(1))
    b = record(store, LISTING, 2, T0)  # no vector (the photo could not be embedded)
    assert store.missing_vectors("m@1") == [b.photo_id]
    assert store.missing_vectors("m@2") == [a.photo_id, b.photo_id]  # a new model: everything
    assert store.add_vector(b.photo_id, "m@1", unit(2)) and not store.add_vector(b.photo_id, "m@1", unit(3))
    assert store.vector_exists(b.photo_id, "m@1") and not store.vector_exists(b.photo_id, "m@2")
    assert not store.add_vector(9999, "m@1", unit(4))  # no such photo
    ids, vecs = store.vectors("m@1")
    assert list(ids) == [a.photo_id, b.photo_id]
    np.testing.assert_allclose(vecs, np.stack([unit(1), unit(2)]))
    found, got = store.vectors_of("m@1", [b.photo_id, 12345])
    assert list(found) == [b.photo_id] and np.allclose(got[0], unit(2))
    assert store.fingerprints() == {"m@1": 2} and store.missing_vector_count("m@2") == 2


def test_vectors_stream_in_pages_after_a_sequence(store):
    for n in range(7):
        record(store, ListingFacts(f"L-{n}"), n, T0, unit(n))
    pages = list(store.vector_pages("m@1", page=3))
    assert [len(p.ids) for p in pages] == [3, 3, 1]
    seqs = np.concatenate([p.seqs for p in pages])
    assert list(seqs) == sorted(seqs)
    tail = list(store.vector_pages("m@1", after_seq=int(seqs[4])))
    assert len(tail) == 1 and len(tail[0].ids) == 2
    assert store.last_vector_seq("m@1") == int(seqs[-1])
    assert list(store.vector_pages("m@1", after_seq=int(seqs[-1]))) == []


def test_copy_files_are_private_and_full_photos_kept_only_when_given(store):
    full = b"\xff\xd8 the full photo"
    sha = sha256_hex(full)
    r = store.record(LISTING, sha, full, b"\xff\xd8 small copy", 4000, 3000, "JPEG", seen_at=T0)
    assert store.copy_bytes(r.photo_id) == b"\xff\xd8 small copy" and store.full_bytes(r.photo_id) == full
    kept = store.photo(r.photo_id)
    assert kept.has_full and (kept.width, kept.height) == (4000, 3000)
    for path in store.files.all_files():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.copy_path(kept).name == sha256_hex(b"\xff\xd8 small copy") + ".jpg"
    r2 = record(store, LISTING, 2, T0)
    assert store.full_bytes(r2.photo_id) is None


def test_a_copy_is_made_only_for_a_new_photo(store):
    made = []

    def make() -> bytes:
        made.append(1)
        return b"\xff\xd8 made"

    sha, _ = photo(1)
    store.record(LISTING, sha, None, make, 10, 10, "PNG", seen_at=T0)
    store.record(ListingFacts("other"), sha, None, make, 10, 10, "PNG", seen_at=T0)
    assert made == [1]


def test_purge_removes_what_was_not_seen_within_the_retention(store):
    old = ListingFacts("old")
    shared = ListingFacts("shared")
    gone = record(store, old, 1, T0, unit(1), full=b"full 1")
    kept_by_alert = record(store, old, 2, T0, unit(2))
    recent = record(store, ListingFacts("new"), 3, T0 + dt.timedelta(days=400), unit(3))
    # One photo seen long ago in one listing and recently in another: kept, with both sightings.
    both = record(store, shared, 4, T0, unit(4))
    record(store, ListingFacts("new"), 4, T0 + dt.timedelta(days=400))
    files_before = len(store.files.all_files())

    report = store.purge(365, now=T0 + dt.timedelta(days=401), keep_photo_ids={kept_by_alert.photo_id})
    assert report.photo_ids == [gone.photo_id] and report.photos == 1 and report.vectors == 1
    assert report.sightings == 1 and report.files == 2  # its copy and its full photo
    assert report.listings == 0  # "old" still shows the photo an alert keeps
    assert store.photo(gone.photo_id) is None and store.has_photo(photo(1)[0]) is None
    assert len(store.files.all_files()) == files_before - 2
    for pid in (kept_by_alert.photo_id, recent.photo_id, both.photo_id):
        assert store.photo(pid) is not None
    assert len(store.listings_of(both.photo_id)) == 2

    report = store.purge(365, now=T0 + dt.timedelta(days=401))  # the alert is settled
    assert report.photo_ids == [kept_by_alert.photo_id] and report.listings == 1  # "old" is left empty: gone
    assert store.has_listing("", "old") is None and store.has_listing("", "shared") is not None
    assert store.purge(0, now=T0 + dt.timedelta(days=10_000)).photos == 0  # 0: kept forever
    assert set(store.vector_ids("m@1")) == {recent.photo_id, both.photo_id}


def test_a_copy_shared_by_two_photos_stays_until_the_last_goes(store):
    same_copy = b"\xff\xd8 identical copy"
    a = store.record(ListingFacts("a"), sha256_hex(b"a"), None, same_copy, 10, 10, "JPEG", seen_at=T0)
    store.record(ListingFacts("b"), sha256_hex(b"b"), None, same_copy, 10, 10, "JPEG",
                 seen_at=T0 + dt.timedelta(days=100))
    report = store.purge(30, now=T0 + dt.timedelta(days=50))
    assert report.photo_ids == [a.photo_id] and report.files == 0
    assert len(store.files.all_files()) == 1


def test_ids_are_never_reused(store):
    first = record(store, ListingFacts("x"), 1, T0)
    store.purge(1, now=T0 + dt.timedelta(days=2))
    again = record(store, ListingFacts("x"), 1, T0 + dt.timedelta(days=3))
    assert again.new_photo and again.photo_id > first.photo_id
    assert again.listing_row_id > first.listing_row_id


def test_listing_facts_need_an_id_and_fit_the_columns():
    with pytest.raises(ValueError):
        ListingFacts("  ")
    facts = ListingFacts.from_fields(" 42 ", {"title": "t" * 5000, "price": "12", "platform": "ebay",
                                              "listed_at": "2024-03-01"}, source="dump.csv")
    assert facts.listing_id == "42" and len(facts.title) == 2000 and facts.platform == "ebay"
    assert facts.source == "dump.csv" and facts.listed_at == "2024-03-01"
    assert ListingFacts("1", price=12.5, listed_at=dt.date(2024, 3, 1)).price == "12.5"
    assert ArchivePhoto.__table__.kwargs.get("sqlite_autoincrement") is True


@pytest.mark.databases
def test_in_the_database_copies_are_rows_every_replica_reads_and_purge_removes(settings, tmp_path):
    """HM_PHOTO_STORE=database: no archive folder; another process with another data directory reads the copies."""
    from sqlalchemy import func, select

    from app.registry.archive import ArchiveBlob

    settings.data_dir.mkdir(parents=True)
    registry = RegistryStore(settings.db_url, tmp_path / "photos")
    store = ArchiveStore(registry.sessions, tmp_path / "a" / "archive", in_database=True)
    other = ArchiveStore(registry.sessions, tmp_path / "b" / "archive", in_database=True)
    try:
        gone = record(store, ListingFacts("old"), 1, T0, unit(1), full=b"full 1")
        same_copy = b"\xff\xd8 identical copy"
        a = store.record(ListingFacts("a"), sha256_hex(b"a"), None, same_copy, 10, 10, "JPEG", seen_at=T0)
        store.record(ListingFacts("b"), sha256_hex(b"b"), None, same_copy, 10, 10, "JPEG",
                     seen_at=T0 + dt.timedelta(days=400))
        assert not (tmp_path / "a" / "archive").exists()
        assert other.copy_bytes(gone.photo_id) == photo(1)[1] and other.full_bytes(gone.photo_id) == b"full 1"
        with registry.sessions() as s:
            assert s.scalar(select(func.count()).select_from(ArchiveBlob)) == 3  # two copies, one full photo

        report = other.purge(365, now=T0 + dt.timedelta(days=401))
        assert sorted(report.photo_ids) == sorted([gone.photo_id, a.photo_id])
        assert report.files == 2  # the first photo's copy and full bytes; the shared copy stays for "b"
        with registry.sessions() as s:
            assert s.scalar(select(func.count()).select_from(ArchiveBlob)) == 1
        with pytest.raises(KeyError):
            store.copy_bytes(gone.photo_id)
    finally:
        registry.close()
