"""VectorIndex by registry size: exact flat search while small, IVF above the threshold when its
recall@10 against exact search reaches 0.99, with removal and save/load by photo id still exact."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from app.pipeline.retrieve import VectorIndex

DIM = 64
N = 20_000


def clustered(rng, n, dim=DIM):
    centres = rng.standard_normal((n // 20, dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near(rng, vecs):
    q = vecs + 0.5 / np.sqrt(DIM) * rng.standard_normal(vecs.shape).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def recall_at_10(index, vecs, ids, queries):
    truth = ids[np.argsort(-(queries @ vecs.T), axis=1)[:, :10]]
    _, found = index.search(queries, 10)
    return np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])


@pytest.fixture(scope="module")
def registry():
    rng = np.random.default_rng(0)
    vecs = clustered(rng, N)
    ids = np.arange(N, dtype=np.int64) * 3 + 5  # photo ids are not positions
    return ids, vecs, VectorIndex.build("m@1", ids, vecs, DIM, ann_min_vectors=10_000)


def test_small_registries_stay_exact():
    rng = np.random.default_rng(1)
    vecs = clustered(rng, 2_000)
    index = VectorIndex.build("m@1", np.arange(2_000), vecs, DIM, ann_min_vectors=10_000)
    assert index.kind == "flat"
    assert recall_at_10(index, vecs, np.arange(2_000), near(rng, vecs[:50])) == 1.0


def test_large_registry_is_ivf_with_recall_against_exact_search(registry):
    ids, vecs, index = registry
    assert index.kind == "ivf" and index.count == N
    queries = near(np.random.default_rng(2), vecs[np.random.default_rng(3).integers(0, N, 300)])
    assert recall_at_10(index, vecs, ids, queries) >= 0.98  # fresh queries, not the build's sample
    _, found = index.search(vecs[[17]], 1)
    assert found[0, 0] == ids[17]
    assert sorted(index.ids()) == sorted(ids)


def test_ivf_removes_and_replaces_by_photo_id(registry, tmp_path):
    ids, vecs, built = registry
    built.save(tmp_path)
    index = VectorIndex.load(tmp_path)  # a copy: the module's registry stays whole
    assert index.kind == "ivf"
    gone = ids[:100]
    assert index.remove(gone) == 100 and index.count == N - 100
    _, found = index.search(vecs[:100], 10)
    assert not set(found.ravel()) & set(gone)
    other = np.random.default_rng(9).standard_normal((1, DIM)).astype(np.float32)
    other /= np.linalg.norm(other)
    index.add(ids[[200]], other)  # re-adding an id replaces its vector
    assert index.count == N - 100
    scores, found = index.search(other, 1)
    assert found[0, 0] == ids[200] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_ivf_save_and_load_round_trip(registry, tmp_path):
    ids, vecs, index = registry
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.kind == "ivf" and loaded.count == N and loaded.fingerprint == "m@1"
    queries = near(np.random.default_rng(4), vecs[:20])
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])


def test_data_ivf_cannot_search_accurately_stays_exact(caplog):
    # Uniform noise has no clusters: probing a quarter of the lists misses neighbours, so the build keeps flat.
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((N, 256)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with caplog.at_level(logging.WARNING, logger="app.pipeline.retrieve"):
        index = VectorIndex.build("m@1", np.arange(N), vecs, 256, ann_min_vectors=10_000)
    assert index.kind == "flat" and "keeping exact search" in caplog.text


def test_a_flat_index_growing_past_the_threshold_becomes_ivf():
    rng = np.random.default_rng(6)
    vecs = clustered(rng, 12_000)
    index = VectorIndex.build("m@1", np.arange(9_000), vecs[:9_000], DIM, ann_min_vectors=10_000)
    assert index.kind == "flat"
    index.add(np.arange(9_000, 12_000), vecs[9_000:])
    assert index.kind == "ivf" and index.count == 12_000
    assert recall_at_10(index, vecs, np.arange(12_000), near(rng, vecs[:100])) >= 0.98
