"""The retro-hunt's progress and turn: shared by every process and replica of one registry database."""

from __future__ import annotations

import json

import pytest

from app.jobs.retrohunt import STATE_FILE, HuntProgress, hunt_turn
from app.registry.store import RegistryStore

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases


@pytest.fixture
def stores(settings, tmp_path):
    """Two processes' stores on one registry database (two replicas, or a worker and the CLI)."""
    settings.data_dir.mkdir(parents=True)
    made = [RegistryStore(settings.db_url, tmp_path / f"photos-{n}") for n in (1, 2)]
    yield made
    for store in made:
        store.close()


def test_progress_is_shared_through_the_database_and_only_moves_forward(stores, tmp_path):
    one = HuntProgress(stores[0].sessions, tmp_path / "replica-a")
    two = HuntProgress(stores[1].sessions, tmp_path / "replica-b")
    assert one.last("m@1") is None
    one.save("m@1", 10)
    assert two.last("m@1") == 10  # the other replica goes on from there
    two.save("m@1", 7)  # an older position never takes a newer one back
    assert one.last("m@1") == 10 and one.last("other@2") is None


def test_an_earlier_versions_progress_file_is_taken_over(stores, tmp_path):
    data = tmp_path / "old-data"
    data.mkdir()
    (data / STATE_FILE).write_text(json.dumps({"m@1": 42}))
    assert HuntProgress(stores[0].sessions, data).last("m@1") == 42
    assert HuntProgress(stores[1].sessions, tmp_path / "elsewhere").last("m@1") == 42  # now in the database


def test_one_process_hunts_at_a_time(stores, settings, db_backend, tmp_path):
    # PostgreSQL: an advisory lock, whatever the data directories; SQLite: a file lock in the shared one.
    other_dir = tmp_path / "replica-b" if db_backend == "postgresql" else settings.data_dir
    other_dir.mkdir(exist_ok=True)
    with hunt_turn(stores[0].engine, settings.data_dir) as first:
        assert first
        with hunt_turn(stores[1].engine, other_dir) as second:
            assert not second
    with hunt_turn(stores[1].engine, other_dir) as after:
        assert after  # released at the end of the first turn
