"""Fitting the calibrated score and validating it by object (``app/jobs/calibration.py``), on
labelled candidates drawn at random: no model runs here."""

from __future__ import annotations

import random

import pytest

from app.jobs import calibration as cal_mod
from app.jobs.calibration import (
    calibrate,
    clopper_pearson_upper,
    cross_validate,
    figures_by_pack,
    folds_of,
    group_of,
    nearest,
    registry_evidence_earns_its_place,
    rescore,
    views,
)


def candidate(pack, query, rank, obj, expected, right, rng, tags=()):
    """A candidate whose evidence looks like the search's: the right object has agreeing keypoints
    over the object and an agreeing surface; a look-alike has a high cosine and few keypoints."""
    return {
        "pack": pack, "query": query, "rank": rank, "object_id": obj, "expected": list(expected),
        "tags": list(tags), "label": int(right), "open_set": not expected, "exact_reuse": False,
        "cosine": rng.uniform(0.8, 0.95) if right else rng.uniform(0.6, 0.9),
        "margin": 0.0, "colour": rng.uniform(0.8, 1.0) if right else rng.uniform(0.4, 0.95), "colour_margin": 0.0,
        "inliers": rng.randint(20, 200) if right else rng.choice([0, 0, 0, 9]),
        "matches": rng.randint(30, 250) if right else rng.randint(0, 20),
        "coverage": rng.uniform(0.5, 1.0) if right else rng.uniform(0.0, 0.2),
        "surface": rng.uniform(0.9, 1.0) if right else None, "surface_cells": 60 if right else 0,
    }


def synthetic_rows(seed: int, objects: int = 30) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for pack in ("paintings", "objects"):
        names = [f"{pack}-{i}" for i in range(objects)]
        for obj in names:
            for view in range(3):
                query = f"queries/{obj}_{view}.jpg"
                others = rng.sample([n for n in names if n != obj], 4)
                cands = [obj] + others
                rng.shuffle(cands)
                rows.extend(candidate(pack, query, r, o, [obj], o == obj, rng) for r, o in enumerate(cands, 1))
        for u in range(4):  # objects the pack leaves unregistered, two photos each
            for view in range(2):
                query = f"queries/unreg{u}_{view}.jpg"
                rows.extend(candidate(pack, query, r, o, [], False, rng)
                            for r, o in enumerate(rng.sample(names, 5), 1))
    return rows


def test_each_query_is_also_a_query_of_an_unregistered_object():
    rows = synthetic_rows(1, objects=5)
    v = views(rows)
    registered = [r for r in v if r["view"] == "registered"]
    unregistered = [r for r in v if r["view"] == "unregistered"]
    assert len(registered) == len(rows)
    # The object itself is gone from its query's unregistered view, every candidate is wrong.
    assert unregistered and not any(r["label"] or r["object_id"] in r["expected"] for r in unregistered)
    assert all(r["open_set"] for r in unregistered)
    # Margins are those of the registry without the object.
    some = [r for r in unregistered if r["query"] == unregistered[0]["query"]]
    best = max(r["cosine"] for r in some)
    assert max(r["margin"] for r in some) == pytest.approx(best - sorted(r["cosine"] for r in some)[-2])


def test_queries_are_grouped_by_the_object_they_show():
    assert group_of({"pack": "p", "query": "queries/a.jpg", "expected": ["x"]}) == "p:x"
    assert group_of({"pack": "p", "query": "queries/twin-3.jpg", "expected": [], "tags": ["twin-of:x"]}) == "p:x"
    a = group_of({"pack": "p", "query": "queries/obj41_45.png", "expected": []})
    assert a == group_of({"pack": "p", "query": "queries/obj41_135.png", "expected": []}) != \
        group_of({"pack": "p", "query": "queries/obj42_45.png", "expected": []})


def test_folds_hold_every_object_once_and_every_pack_in_each_fold():
    v = views(synthetic_rows(2))
    fold = folds_of(v, 5, seed=1)
    assert set(fold) == {r["group"] for r in v}
    for f in range(5):
        assert {r["pack"] for r in v if fold[r["group"]] == f} == {"paintings", "objects"}


def test_no_object_is_scored_by_a_fit_that_saw_it(monkeypatch):
    rows = synthetic_rows(3)
    seen_by_fit: list[set] = []
    real = cal_mod.calibrate

    def spy(train, model, features=cal_mod.PAIR_FEATURES):
        seen_by_fit.append({r["group"] for r in train})
        return real(train, model, features)

    monkeypatch.setattr(cal_mod, "calibrate", spy)
    result = cross_validate(rows, "m", folds=5, seed=4)
    fold = folds_of(views(rows), 5, seed=4)
    assert len(seen_by_fit) == 5
    for f, seen in enumerate(seen_by_fit):
        assert not {g for g, k in fold.items() if k == f} & seen
    figures = result["figures"]
    assert {"paintings", "objects", "all"} <= set(figures)
    for f in figures.values():
        assert f["false_match_rate"] == 0.0 and f["wrong_first_answer_match"] == 0
        assert f["false_match_rate_upper95"] == pytest.approx(clopper_pearson_upper(0, f["open_set_queries"]), abs=1e-4)
        assert f["recall@1"] >= 0.95 and f["match_recall"] >= 0.9
        assert f["open_set_by_kind"]["held-out object"]["queries"] >= 80


def test_clopper_pearson_upper_bounds():
    assert clopper_pearson_upper(0, 40) == pytest.approx(0.0881, abs=1e-4)
    assert clopper_pearson_upper(0, 90) == pytest.approx(0.0402, abs=1e-4)
    assert clopper_pearson_upper(1, 100) == pytest.approx(0.0545, abs=1e-4)
    assert clopper_pearson_upper(3, 3) == 1.0 and clopper_pearson_upper(0, 0) is None


def test_fit_is_monotone_and_looks_alone_never_match():
    rows = synthetic_rows(5)
    cal = calibrate(views(rows), "m")
    assert all(w >= 0 for w in cal.weights.values()), cal.weights
    assert "margin" not in cal.weights  # registry evidence only where held-out figures justify it
    assert 0.5 <= cal.match <= 0.99 and 0 < cal.possible <= cal.match
    lookalike = {**rows[0], "cosine": 0.999, "colour": 1.0, "inliers": 0, "matches": 0, "coverage": 0.0,
                 "surface": None, "label": 0, "query": "q-lookalike"}
    [scored] = rescore([lookalike], cal)
    assert scored["verdict"] != "match"


def test_rescoring_ranks_each_view_by_score():
    rows = synthetic_rows(6, objects=8)
    v = views(rows)
    ranked = rescore(v, calibrate(v, "m"))
    by = {}
    for r in ranked:
        by.setdefault((r["pack"], r["query"], r["view"]), []).append(r)
    for cands in by.values():
        scores = [c["score"] for c in sorted(cands, key=lambda c: c["rank"])]
        assert scores == sorted(scores, reverse=True)
    assert figures_by_pack(ranked)["all"]["queries"] == 2 * 8 * 3


def test_the_fit_sees_each_views_nearest_candidates_by_cosine():
    rows = [{"pack": "p", "query": q, "cosine": c, "rank": r} for q in ("a", "b")
            for r, c in enumerate([0.5, 0.9, 0.1, 0.7], start=1)]
    kept = nearest(rows, 2)
    assert sorted((r["query"], r["cosine"]) for r in kept) == [("a", 0.7), ("a", 0.9), ("b", 0.7), ("b", 0.9)]


def test_registry_evidence_is_used_only_where_held_out_figures_justify_it():
    pair = {"false_match_rate_upper95": 0.01, "wrong_first_answer_match": 0, "recall@1": 0.95, "match_recall": 0.80}
    assert not registry_evidence_earns_its_place(dict(pair), pair)  # no gain: pair evidence alone
    assert not registry_evidence_earns_its_place({**pair, "match_recall": 0.805}, pair)  # a gain within noise
    assert registry_evidence_earns_its_place({**pair, "match_recall": 0.85}, pair)
    assert not registry_evidence_earns_its_place({**pair, "match_recall": 0.9, "recall@1": 0.94}, pair)
    assert not registry_evidence_earns_its_place({**pair, "match_recall": 0.9, "false_match_rate_upper95": 0.02}, pair)
    assert not registry_evidence_earns_its_place({**pair, "match_recall": 0.9, "wrong_first_answer_match": 1}, pair)
