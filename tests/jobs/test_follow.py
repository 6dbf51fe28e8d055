"""IndexFollower: replicas with indexes of their own, in step through the registry's change feed alone."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.jobs.follow import IndexFollower
from app.registry.changes import PHOTOS_ADDED, PHOTOS_REMOVED
from app.service import MatchingService, PhotoInput
from tests.conftest import jpeg_bytes, random_photo

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases


@pytest.fixture
def replica(settings, encoder, tmp_path):
    """A second process's service on the same registry database, with a data directory (and index file) of its own."""
    url = settings.db_url  # SQLite: the first replica's file; PostgreSQL: the test's database
    other = settings.model_copy(update={"data_dir": tmp_path / "replica-b", "database_url": url})
    svc = MatchingService(other, encoder=encoder).start()
    yield svc
    svc.close()


def register(service, i):
    return service.register_artefact({"inventory_number": f"F-{i}", "institution": "X"},
                                     [PhotoInput(jpeg_bytes(random_photo(i)), view="front")])


def indexed(service) -> list[int]:
    return sorted(int(i) for i in service.index.ids())


def wait_until_indexed(service, photo_id: int, seconds: float, failure: str) -> None:
    started = time.monotonic()
    while photo_id not in indexed(service):
        assert time.monotonic() - started < seconds, failure
        time.sleep(0.02)


def test_each_change_is_recorded_in_its_transaction(service):
    start = service.store.last_change_seq()
    a = register(service, 1)
    service.delete_artefact(a.id)
    changes = service.store.changes_after(start)
    assert [(c.kind, c.photo_ids) for c in changes] == [(PHOTOS_ADDED, [a.photos[0].id]),
                                                       (PHOTOS_REMOVED, [a.photos[0].id])]
    assert changes[0].fingerprint == service.fingerprint


def test_a_replica_follows_registrations_and_deletions_of_another(service, replica):
    follower = IndexFollower(replica, poll_s=0.05)
    a = register(service, 1)
    b = register(service, 2)
    assert replica.index.count == 0  # its index is its own: nothing reached it yet
    assert follower.follow_once() == 2
    assert indexed(replica) == indexed(service) == sorted([a.photos[0].id, b.photos[0].id])
    query = jpeg_bytes(random_photo(2))
    assert replica.search(query).results[0].artefact_id == b.id

    replica.delete_artefact(b.id)  # deleted through the other replica: its own index at once
    assert indexed(replica) == [a.photos[0].id]
    IndexFollower(service).follow_once()
    assert indexed(service) == [a.photos[0].id]
    assert all(r.artefact_id != b.id for r in service.search(query).results)


def test_following_is_idempotent_and_ignores_its_own_changes(service, replica):
    follower = IndexFollower(service)
    register(service, 1)
    version = service.index.version
    follower.follow_once()  # its own registration: already indexed, nothing changes
    assert service.index.version == version
    service.change_position = 0  # read the whole feed again
    follower.follow_once()
    assert service.index.version == version and service.index.count == 1


def test_a_photo_deleted_before_it_is_indexed_is_not_indexed(service, replica):
    """Replica B deletes an artefact and A's follower applies it before A's request adds the photos to its index
    (a slow thread between commit and index): the late add must not bring the photo back."""
    prepared = service.prepare_photos([PhotoInput(jpeg_bytes(random_photo(5)))])
    artefact = service.store.create_artefact({"inventory_number": "L-1", "institution": "X"}, prepared,
                                             service.fingerprint)
    replica.delete_artefact(artefact.id)
    IndexFollower(service).follow_once()
    service._index_photos(artefact.photos, prepared)  # the request's late index update
    assert service.index.count == 0


def test_a_rebuild_with_the_stored_vectors_reaches_the_other_replica(service, replica):
    register(service, 1)
    IndexFollower(replica).follow_once()
    # Vectors stored by a process that did not index them (e.g. `index rebuild --reembed` elsewhere).
    prepared = service.prepare_photos([PhotoInput(jpeg_bytes(random_photo(7)))])
    prepared[0].vector = None
    artefact = service.store.create_artefact({"inventory_number": "R-1", "institution": "X"}, prepared, None)
    service.rebuild_index(reembed=True)
    assert artefact.photos[0].id in indexed(service)
    IndexFollower(replica).follow_once()
    assert indexed(replica) == indexed(service)


def test_the_running_follower_applies_a_change_within_two_seconds(service, replica):
    follower = IndexFollower(replica).start()  # the default polling (PostgreSQL: woken by NOTIFY)
    try:
        time.sleep(0.3)  # listening
        a = register(service, 3)
        wait_until_indexed(replica, a.photos[0].id, 2.0, "the change did not reach the other replica within 2 s")
    finally:
        follower.stop()


def test_changes_older_than_a_week_are_purged(service):
    import datetime as dt

    register(service, 1)
    assert service.store.purge_changes(dt.datetime(2000, 1, 1)) == 0
    assert service.store.purge_changes(dt.datetime(2100, 1, 1)) == 1
    assert service.store.changes_after(0) == []
    assert np.array_equal(service.store.vector_ids(service.fingerprint), service.index.ids())


def test_on_postgresql_a_notification_wakes_the_follower(service, replica, db_backend):
    if db_backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    follower = IndexFollower(replica, poll_s=60).start()  # polling would take a minute
    try:
        time.sleep(0.5)
        a = register(service, 4)
        wait_until_indexed(replica, a.photos[0].id, 1.0, "NOTIFY did not wake the follower")
    finally:
        follower.stop()
