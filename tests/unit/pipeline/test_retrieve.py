"""VectorIndex: exact inner-product search by photo id, atomic save, damaged files."""

from __future__ import annotations

import numpy as np

from app.pipeline.retrieve import INDEX_FILE, VectorIndex


def unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_returns_ids_best_first():
    rng = np.random.default_rng(0)
    vecs = unit(rng, 100)
    ids = np.arange(1000, 1100)
    idx = VectorIndex.build("m@1", ids, vecs, 16)
    scores, found = idx.search(vecs[[3, 40]], 5)
    assert found[0, 0] == 1003 and found[1, 0] == 1040
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    exact = np.argsort(-(vecs @ vecs[3]))[:5] + 1000
    assert list(found[0]) == list(exact)
    assert np.all(np.diff(scores[0]) <= 1e-6)


def test_add_replaces_and_remove_deletes():
    rng = np.random.default_rng(1)
    idx = VectorIndex("m@1", 16)
    a, b = unit(rng, 2)
    idx.add(np.array([7]), a[None])
    idx.add(np.array([7]), b[None])
    assert idx.count == 1
    _, found = idx.search(b[None], 1)
    assert found[0, 0] == 7
    v = idx.version
    assert idx.remove([7]) == 1 and idx.count == 0 and idx.version == v + 1
    scores, found = idx.search(b[None], 3)
    assert found.shape == (1, 0)


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    vecs = unit(rng, 20)
    idx = VectorIndex.build("m@1", np.arange(20), vecs, 16, version=4)
    idx.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.fingerprint == "m@1" and loaded.count == 20 and loaded.version == idx.version
    assert sorted(loaded.ids()) == list(range(20))
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_damaged_or_inconsistent_files_load_as_none(tmp_path):
    idx = VectorIndex.build("m@1", np.arange(3), unit(np.random.default_rng(3), 3), 16)
    idx.save(tmp_path)
    (tmp_path / INDEX_FILE).write_bytes(b"garbage")
    assert VectorIndex.load(tmp_path) is None
    idx.save(tmp_path)
    (tmp_path / (INDEX_FILE + ".json")).write_text('{"fingerprint": "m@1", "dim": 16, "count": 99, "version": 1}')
    assert VectorIndex.load(tmp_path) is None
    assert VectorIndex.load(tmp_path / "missing") is None
