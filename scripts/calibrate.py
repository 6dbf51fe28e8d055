"""Fit the calibrated score and the verdict thresholds of the active model on benchmark packs.

Every pack is evaluated through the search code of the API; every returned candidate becomes one
labelled example (is it the right object?) with its evidence (cosine, margin, colour, geometric
inliers). A logistic regression turns the evidence into P(same object); the `match` threshold is set
so that wrong first answers (registered queries answered with another object, and unregistered
objects) are rarely called `match`, and `possible` so that nearly every right first answer is at least
`possible`. The result is written with the data it came from to ``app/pipeline/calibrations/<model>.json``.

    HM_MODEL=efficientnet-lite0 .venv/bin/python -m scripts.calibrate \\
        ../shared/benchmarks/museum-paintings ../shared/benchmarks/coil100-views out/coins-listing

``--cross-check`` also fits on all packs but one and reports the held-out pack's figures, which say
how well the calibration carries over to packs it has not seen.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import app
from app.core.config import get_settings
from app.embedding import create_encoder
from app.jobs.evaluate import evaluate_pack
from app.pipeline.calibrate import FEATURES, Calibration, Evidence, calibration_path, uncalibrated
from app.pipeline.search import VERIFIED_CANDIDATES
from scripts.common import script_parser, write_json

# The search code whose results the candidate cache keeps: the app package this process imported.
APP_CODE = Path(app.__file__).resolve().parent

# Share of wrong first answers allowed to reach `match` on the fitting data: none. A 0.5% allowance
# let one unregistered coin of 40 through on the coins' pack; packs the fit has not seen fare worse.
TARGET_FALSE_MATCH = 0.0
# The fit sees each query's nearest candidates by embedding only (not by an earlier fit's score, so
# a refit does not depend on the last one). Verdicts are decided among the first few; the far ones
# are easy negatives that, weighted as much, pull the fit toward separating easy cases. Measured on
# the three dev packs with --cross-check (held-out false-match rate, coil100-views / coins-listing):
# nearest 2 or 3: 0.0 / 0.0, and coil100-views match recall 0.9545 on the fitting data; nearest 4:
# 0.0 / 0.025; 5: 0.025 / 0.025; 8: 0.075 / 0.025; all 32: 0.10 / 0.0 with match recall 0.9351.
FIT_NEAREST = 3
# Share of right first answers that must be at least `possible`.
POSSIBLE_RECALL = 0.99


def candidate_rows(pack: Path, cache: Path, settings, encoder) -> list[dict]:
    """The pack's candidates with evidence, cached by pack content, model, settings and search code."""
    code = b"".join(p.read_bytes() for p in sorted(APP_CODE.rglob("*.py")))
    key = hashlib.sha256(
        (pack / "queries.jsonl").read_bytes() + (pack / "references.jsonl").read_bytes()
        + encoder.fingerprint.id.encode() + settings.model_dump_json().encode() + code
    ).hexdigest()[:16]
    path = cache / f"{pack.name}-{key}.jsonl"
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines()]
    # As many candidates as the service verifies, so the fit sees every candidate it will score.
    result = evaluate_pack(pack, settings, encoder=encoder, top_k=VERIFIED_CANDIDATES)
    rows = [{**r, "pack": pack.name} for r in result["candidates"]]
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def evidence(row: dict) -> Evidence:
    return Evidence(row["cosine"], row["margin"], row["colour"] or 0.0, row["inliers"], row["colour_margin"] or 0.0,
                    row.get("matches") or 0)


def features(rows: list[dict]) -> np.ndarray:
    return np.array([[evidence(r).vector()[k] for k in FEATURES] for r in rows], dtype=np.float64)


def nearest(rows: list[dict], n: int) -> list[dict]:
    """Each query's ``n`` candidates of highest cosine."""
    by_query: dict[tuple, list[dict]] = {}
    for r in rows:
        by_query.setdefault((r["pack"], r["query"]), []).append(r)
    return [c for cands in by_query.values() for c in sorted(cands, key=lambda c: -c["cosine"])[:n]]


def fit(rows: list[dict]) -> tuple[dict[str, float], float]:
    """Logistic regression on standardised evidence with non-negative weights, folded back to
    weights on the raw evidence.

    Non-negative because more evidence must never lower the score: an unconstrained fit on packs of
    different kinds learns, for example, a negative cosine weight (on near-identical coins every
    wrong candidate has a high cosine too) that would reward low similarity on a pack it has not seen.
    """
    from scipy.optimize import minimize

    rows = nearest([r for r in rows if not r["exact_reuse"]], FIT_NEAREST)
    x, y = features(rows), np.array([r["label"] for r in rows], dtype=np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mu) / sd
    # Packs differ in size and in their share of right answers: weight each pack, and within it the
    # right and wrong candidates, equally, so that no single pack or class decides the fit.
    packs = np.array([r["pack"] for r in rows])
    weight = np.zeros(len(rows))
    for p in set(packs.tolist()):
        for label in (0, 1):
            sel = (packs == p) & (y == label)
            if sel.any():
                weight[sel] = 1.0 / sel.sum()
    weight *= len(rows) / weight.sum()
    l2 = 1.0 / len(rows)

    def loss(theta):
        w, b = theta[:-1], theta[-1]
        t = z @ w + b
        p = 1.0 / (1.0 + np.exp(-t))
        value = np.sum(weight * (np.logaddexp(0, t) - y * t)) / len(rows) + l2 * np.sum(w * w) / 2
        grad_t = weight * (p - y) / len(rows)
        return value, np.append(z.T @ grad_t + l2 * w, grad_t.sum())

    n = z.shape[1]
    res = minimize(loss, np.zeros(n + 1), jac=True, method="L-BFGS-B", bounds=[(0, None)] * n + [(None, None)])
    w_std, b_std = res.x[:-1], res.x[-1]
    w = w_std / sd
    b = float(b_std - np.sum(w_std * mu / sd))
    return {k: round(float(v), 6) for k, v in zip(FEATURES, w)}, round(b, 6)


def rescore(rows: list[dict], cal: Calibration) -> list[dict]:
    """Score every candidate with ``cal`` and re-rank each query's candidates as the service does."""
    by_query: dict[tuple, list[dict]] = {}
    for r in rows:
        score = 1.0 if r["exact_reuse"] else cal.score(evidence(r))
        by_query.setdefault((r["pack"], r["query"]), []).append({**r, "score": score})
    out = []
    for cands in by_query.values():
        cands.sort(key=lambda c: (-c["score"], -(c["cosine"] or 1.0)))
        out.extend({**c, "rank": i + 1} for i, c in enumerate(cands))
    return out


def thresholds(rows: list[dict]) -> tuple[float, float]:
    """`match`: above all but the allowed share of wrong first answers, on every pack alone (a pack
    with few open-set queries allows none); `possible`: reached by nearly every right first answer."""
    tops = [r for r in rows if r["rank"] == 1]
    match = 0.5
    for pack in sorted({r["pack"] for r in tops}):
        pack_tops = [r for r in tops if r["pack"] == pack]
        wrong = sorted((r["score"] for r in pack_tops if not r["label"]), reverse=True)
        allowed = int(np.floor(TARGET_FALSE_MATCH * len(pack_tops)))
        if len(wrong) > allowed:
            match = max(match, wrong[allowed] + 1e-4)
    match = min(match, 0.99)
    right = sorted(r["score"] for r in tops if r["label"])
    possible = right[int(np.floor((1 - POSSIBLE_RECALL) * len(right)))] if right else match / 2
    return round(match, 4), round(min(possible, match), 4)


def figures(rows: list[dict], cal: Calibration) -> dict:
    """recall@1, match recall and false-match rates of ``rows`` scored with ``cal``."""
    ranked = rescore(rows, cal)
    tops = {(r["pack"], r["query"]): r for r in ranked if r["rank"] == 1}
    positives = [r for r in ranked if r["label"]]
    queries_with_answer = {(r["pack"], r["query"]) for r in positives}
    open_tops = [r for r in tops.values() if r["open_set"]]
    return {
        "recall@1": round(sum(1 for r in positives if r["rank"] == 1) / max(len(positives), 1), 4),
        "match_recall": round(sum(1 for r in positives if r["score"] >= cal.match) / max(len(positives), 1), 4),
        "false_match_rate": round(sum(1 for r in open_tops if r["score"] >= cal.match) / len(open_tops), 4)
        if open_tops else None,
        "wrong_top_match_rate": round(
            sum(1 for k, r in tops.items() if not r["label"] and r["score"] >= cal.match
                and (k in queries_with_answer or r["open_set"])) / max(len(tops), 1), 4),
    }


def calibrate(rows: list[dict], model: str) -> Calibration:
    weights, bias = fit(rows)
    tops = [r for r in rows if r["rank"] == 1 and r["open_set"]]
    background = float(np.median([r["cosine"] for r in tops])) if tops else 0.0
    draft = Calibration(model, weights, bias, 0.5, 0.25, round(background, 4))
    match, possible = thresholds(rescore(rows, draft))
    return Calibration(model, weights, bias, match, possible, round(background, 4))


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("packs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="calibration file (default: app/pipeline/calibrations/<model>.json)")
    ap.add_argument("--cache", type=Path, default=Path("out/calibration-cache"))
    ap.add_argument("--cross-check", action="store_true", help="also fit without each pack and test on it")
    args = ap.parse_args()

    # Candidates are collected with the uncalibrated service so no earlier fit colours them;
    # the evidence itself does not depend on the calibration.
    settings = get_settings().model_copy(update={"match_threshold": None, "possible_threshold": None})
    encoder = create_encoder(settings)
    fp = encoder.fingerprint
    rows = []
    for pack in args.packs:
        pack_rows = candidate_rows(pack, args.cache, settings, encoder)
        print(f"{pack.name}: {len(pack_rows)} candidates", file=sys.stderr)
        rows.extend(pack_rows)

    cal = calibrate(rows, fp.name)
    report = {p.name: figures([r for r in rows if r["pack"] == p.name], cal) for p in args.packs}
    before = uncalibrated(fp.name, encoder.match_threshold, encoder.possible_threshold)
    report_before = {p.name: figures([r for r in rows if r["pack"] == p.name], before) for p in args.packs}
    cross = {}
    if args.cross_check and len(args.packs) > 1:
        for held in args.packs:
            train = [r for r in rows if r["pack"] != held.name]
            cross[held.name] = figures([r for r in rows if r["pack"] == held.name], calibrate(train, fp.name))
    source = {
        "fingerprint": fp.id,
        "fitted": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "scripts/calibrate.py " + " ".join(p.name for p in args.packs),
        "packs": {p.name: {"candidates": sum(1 for r in rows if r["pack"] == p.name),
                           "queries_sha256": hashlib.sha256((p / "queries.jsonl").read_bytes()).hexdigest()[:16]}
                  for p in args.packs},
        "target_false_match": TARGET_FALSE_MATCH,
        "fit_nearest": FIT_NEAREST,
        "possible_recall": POSSIBLE_RECALL,
        "figures_on_fitting_data": report,
        "figures_uncalibrated": report_before,
        **({"figures_held_out": cross} if cross else {}),
    }
    cal = Calibration(cal.model, cal.weights, cal.bias, cal.match, cal.possible, cal.background_cosine,
                      source=source)
    out = args.out or calibration_path(fp.name)
    write_json(out, cal.to_json())
    print(json.dumps(cal.to_json(), indent=2))
    print(f"written: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
