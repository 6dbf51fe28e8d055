"""scripts/calibrate.py: the fit on labelled candidates, without running a model."""

from __future__ import annotations

import random

from scripts import calibrate as script


def synthetic_rows(seed: int) -> list[dict]:
    """Two packs of queries: the right object leads on margin and keypoints, wrong ones do not;
    a third of the second pack's queries show unregistered objects."""
    rng = random.Random(seed)
    rows = []
    for pack in ("paintings", "objects"):
        for q in range(60):
            open_set = pack == "objects" and q % 3 == 0
            right_rank = None if open_set else (1 if rng.random() < 0.95 else 2)
            for rank in range(1, 6):
                right = rank == right_rank
                rows.append({
                    "pack": pack, "query": f"q{q}", "rank": rank, "label": int(right), "open_set": open_set,
                    "exact_reuse": False, "cosine": rng.uniform(0.75, 0.95) if right else rng.uniform(0.5, 0.8),
                    "margin": rng.uniform(0.05, 0.25) if right else rng.uniform(-0.3, 0.03),
                    "colour": rng.uniform(0.8, 1.0) if right else rng.uniform(0.3, 0.95),
                    "colour_margin": rng.uniform(0.0, 0.2) if right else rng.uniform(-0.4, 0.05),
                    "inliers": rng.randint(10, 200) if right and pack == "paintings" else 0,
                })
    return rows


def test_fit_learns_non_negative_weights_and_safe_thresholds():
    rows = synthetic_rows(1)
    cal = script.calibrate(rows, "synthetic")
    assert all(w >= 0 for w in cal.weights.values()), cal.weights
    assert cal.weights["margin"] > 0 and cal.weights["log_inliers"] > 0
    assert 0.5 <= cal.match <= 0.99 and 0 < cal.possible <= cal.match
    figures = {p: script.figures([r for r in rows if r["pack"] == p], cal) for p in ("paintings", "objects")}
    assert figures["objects"]["false_match_rate"] == 0.0
    assert figures["paintings"]["recall@1"] >= 0.95 and figures["paintings"]["match_recall"] >= 0.8
    # The fit carries over to data drawn the same way that it has not seen.
    held_out = script.figures(synthetic_rows(2), cal)
    assert held_out["false_match_rate"] <= 0.05 and held_out["match_recall"] >= 0.8


def test_rescoring_reranks_each_query_by_calibrated_score():
    rows = synthetic_rows(3)
    cal = script.calibrate(rows, "synthetic")
    ranked = script.rescore(rows, cal)
    by_query = {}
    for r in ranked:
        by_query.setdefault((r["pack"], r["query"]), []).append(r)
    for cands in by_query.values():
        scores = [c["score"] for c in sorted(cands, key=lambda c: c["rank"])]
        assert scores == sorted(scores, reverse=True)


def test_the_fit_sees_each_querys_nearest_candidates_by_cosine():
    rows = [{"pack": "p", "query": q, "cosine": c, "rank": r} for q in ("a", "b")
            for r, c in enumerate([0.5, 0.9, 0.1, 0.7], start=1)]
    kept = script.nearest(rows, 2)
    assert sorted((r["query"], r["cosine"]) for r in kept) == [("a", 0.7), ("a", 0.9), ("b", 0.7), ("b", 0.9)]
