"""Fitting the calibrated score on labelled candidates, and checking it on objects the fit never saw.

The data: every candidate a search returned for a query of a benchmark pack, with its evidence and
whether it is the right object (``evaluate_pack``'s candidate rows). Each query is used twice:

- as it was searched (the *registered* view: is the right object ranked first, and called `match`?);
- with its own object taken out of the registry (the *unregistered* view: the same photo is now of
  an object the registry does not hold, and its nearest registered neighbour is often a sibling or
  a look-alike; calling any candidate `match` is a false match). Margins are recomputed without it.

Queries of objects that packs leave unregistered, and generated near twins (a registry photo with one
region altered), are open-set queries as they come.

Validation is by object, never by pack or query: objects are split into ``FOLDS`` groups across all
packs, and every object's queries are scored by a fit that saw none of that object's photos, in
either view. Each pack's false-match rate is reported with its Clopper-Pearson 95% upper bound.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

import app
from app.core.config import Settings
from app.embedding.base import ImageEncoder, ModelFingerprint
from app.pipeline.calibrate import Calibration, Evidence
from app.pipeline.verdict import same_object_shortfall

# Evidence about the pair of photos, and evidence about the registry (how far ahead of the next
# artefact a candidate is). Registry evidence is fitted only when the held-out figures justify it
# (``compare_feature_sets``): an unregistered object whose nearest registered neighbour is its own
# sibling has a large margin.
PAIR_FEATURES = ("cosine", "colour", "object_colour", "log_inliers", "log_matches", "coverage", "surface")
REGISTRY_FEATURES = ("margin", "colour_margin")
FOLDS = 5
# The fit sees each query's nearest candidates by embedding: verdicts are decided among the first
# few; far candidates are easy negatives that would pull the fit toward separating easy cases.
FIT_NEAREST = 3
# Share of right first answers that must be at least `possible`.
POSSIBLE_RECALL = 0.99
CONFIDENCE = 0.95
# The gain in held-out match recall that registry evidence must bring to be fitted at all.
MIN_GAIN = 0.01
# The search code whose results a cache of candidates keeps: the app package this process imported.
APP_CODE = Path(app.__file__).resolve().parent


def evidence(row: dict) -> Evidence:
    surface = row.get("surface")
    return Evidence(row["cosine"] or 0.0, row["margin"] or 0.0, row["colour"] or 0.0, row["inliers"] or 0,
                    row.get("colour_margin") or 0.0, row.get("matches") or 0, row.get("coverage") or 0.0,
                    surface or 0.0, int(row.get("surface_cells") or 0) if surface is not None else 0,
                    row.get("object_colour") or 0.0)


def clopper_pearson_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float | None:
    """Upper end of the two-sided exact (Clopper-Pearson) interval for k events in n trials."""
    from scipy.stats import beta

    if n == 0:
        return None
    if k >= n:
        return 1.0
    return float(beta.ppf(1 - (1 - confidence) / 2, k + 1, n - k))


# --- views and groups -------------------------------------------------------------------------------

def group_of(row: dict) -> str:
    """The object a query is of, for grouping: its registered object, the object a twin was made
    from, or (an unregistered object) its photo's name without the view suffix."""
    expected = row.get("expected") or []
    if expected:
        return f"{row['pack']}:{sorted(expected)[0]}"
    for tag in row.get("tags") or []:
        if tag.startswith("twin-of:"):
            return f"{row['pack']}:{tag[len('twin-of:'):]}"
    stem = row["query"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{row['pack']}:unregistered:{re.split(r'[_-](?=[^_-]*$)', stem)[0]}"


def kind_of(row: dict) -> str:
    if row.get("view") == "unregistered":
        return "held-out object"
    if any(t == "twin" for t in row.get("tags") or []):
        return "twin"
    return "unregistered object" if row["open_set"] else "registered"


def _with_margins(cands: list[dict]) -> list[dict]:
    out = []
    for i, c in enumerate(cands):
        others = cands[:i] + cands[i + 1:]
        best_cos = max((o["cosine"] or 0.0 for o in others), default=0.0)
        best_col = max((o["colour"] or 0.0 for o in others), default=0.0)
        out.append({**c, "margin": (c["cosine"] or 0.0) - best_cos,
                    "colour_margin": (c["colour"] or 0.0) - best_col})
    return out


def views(rows: Iterable[dict]) -> list[dict]:
    """Every query as searched, and every query of one registered object again without that object."""
    by_query: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_query[(r["pack"], r["query"])].append(r)
    out: list[dict] = []
    for (pack, query), cands in by_query.items():
        cands = sorted(cands, key=lambda c: c["rank"])
        first = cands[0]
        group = group_of(first)
        out.extend({**c, "view": "registered", "group": group} for c in cands)
        expected = first.get("expected") or []
        if len(expected) == 1:
            rest = [c for c in cands if c["object_id"] not in expected]
            if rest:
                out.extend({**c, "view": "unregistered", "group": group, "label": 0, "open_set": True,
                            "exact_reuse": False} for c in _with_margins(rest))
    return out


def _by_view(rows: Iterable[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[(r["pack"], r["query"], r.get("view", "registered"))].append(r)
    return out


# --- fitting ----------------------------------------------------------------------------------------

def nearest(rows: list[dict], n: int) -> list[dict]:
    """Each view's ``n`` candidates of highest cosine."""
    return [c for cands in _by_view(rows).values() for c in sorted(cands, key=lambda c: -(c["cosine"] or 0))[:n]]


def fit(rows: list[dict], features: tuple[str, ...]) -> tuple[dict[str, float], float]:
    """Logistic regression on standardised evidence with non-negative weights, folded back to
    weights on the raw evidence.

    Non-negative because more evidence must never lower the score: an unconstrained fit on packs of
    different kinds learns, for example, a negative cosine weight (on near-identical coins every
    wrong candidate has a high cosine too) that would reward low similarity on a pack it has not seen.
    Packs, and within each pack right and wrong candidates, weigh equally.
    """
    from scipy.optimize import minimize

    rows = nearest([r for r in rows if not r["exact_reuse"]], FIT_NEAREST)
    x = np.array([[evidence(r).vector()[k] for k in features] for r in rows], dtype=np.float64)
    y = np.array([r["label"] for r in rows], dtype=np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mu) / sd
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
    return {k: round(float(v), 6) for k, v in zip(features, w)}, round(b, 6)


def rescore(rows: list[dict], cal: Calibration) -> list[dict]:
    """Score, verdict and rank of every candidate under ``cal``, ranked per view as the service ranks."""
    out: list[dict] = []
    for cands in _by_view(rows).values():
        scored = []
        for c in cands:
            if c["exact_reuse"]:  # decided by the search (same picture, surface agrees), not by the fit
                scored.append({**c, "score": 1.0, "verdict": "match"})
                continue
            ev = evidence(c)
            score = cal.score(ev)
            scored.append({**c, "score": score, "verdict": cal.verdict(score, ev)})
        scored.sort(key=lambda c: (-c["score"], -(c["cosine"] or 1.0)))
        out.extend({**c, "rank": i + 1} for i, c in enumerate(scored))
    return out


def thresholds(ranked: list[dict]) -> tuple[float, float]:
    """`match`: above every wrong first answer that has same-object evidence (a pack's wrong answers
    without it are at most `possible` anyway); `possible`: reached by nearly every right first answer."""
    tops = [r for r in ranked if r["rank"] == 1 and not r["exact_reuse"]]
    wrong = [r["score"] for r in tops if not r["label"] and same_object_shortfall(evidence(r)) is None]
    match = min(max([0.5] + [s + 1e-4 for s in wrong]), 0.99)
    right = sorted(r["score"] for r in tops if r["label"])
    possible = right[int(np.floor((1 - POSSIBLE_RECALL) * len(right)))] if right else match / 2
    return round(match, 4), round(min(possible, match), 4)


def background_cosine(rows: list[dict]) -> float:
    tops = [r for r in rows if r["rank"] == 1 and r["open_set"] and r.get("view", "registered") == "registered"]
    return round(float(np.median([r["cosine"] or 0.0 for r in tops])), 4) if tops else 0.0


def calibrate(rows: list[dict], model: str, features: tuple[str, ...] = PAIR_FEATURES) -> Calibration:
    """Fit on ``rows`` (views included) and set the thresholds on them."""
    weights, bias = fit(rows, features)
    draft = Calibration(model, weights, bias, 0.5, 0.25, background_cosine(rows))
    match, possible = thresholds(rescore(rows, draft))
    return Calibration(model, weights, bias, match, possible, draft.background_cosine)


# --- figures ----------------------------------------------------------------------------------------

def figures(ranked: list[dict]) -> dict:
    """recall@1, match recall, false-match rate (with its upper bound) of scored candidates of one pack."""
    by_view = _by_view(ranked)
    registered = {k: v for k, v in by_view.items() if k[2] == "registered" and v and v[0].get("expected")}
    pairs = sum(len(v[0]["expected"]) for v in registered.values())
    # Filtered rank, as ``evaluate`` counts it: in a photo of several registered objects, the other
    # objects of the photo ranked above one do not push it down.
    first = sum(1 for v in registered.values() for c in v
                if c["label"] and all(o["label"] for o in v if o["rank"] < c["rank"]))
    matched = sum(1 for v in registered.values() for c in v if c["label"] and c["verdict"] == "match")
    wrong_top_match = sum(1 for v in registered.values() for c in v
                          if c["rank"] == 1 and not c["label"] and c["verdict"] == "match")
    open_tops = [next(c for c in v if c["rank"] == 1) for k, v in by_view.items() if v and v[0]["open_set"]]
    false = [t for t in open_tops if t["verdict"] == "match"]
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in open_tops:
        by_kind[kind_of(t)][0] += int(t["verdict"] == "match")
        by_kind[kind_of(t)][1] += 1
    upper = clopper_pearson_upper(len(false), len(open_tops))
    return {
        "queries": len(registered), "pairs": pairs,
        "recall@1": round(first / pairs, 4) if pairs else None,
        "match_recall": round(matched / pairs, 4) if pairs else None,
        "wrong_first_answer_match": wrong_top_match,
        "open_set_queries": len(open_tops),
        "false_matches": len(false),
        "false_match_rate": round(len(false) / len(open_tops), 4) if open_tops else None,
        "false_match_rate_upper95": round(upper, 4) if upper is not None else None,
        "open_set_by_kind": {k: {"queries": n, "false_matches": f} for k, (f, n) in sorted(by_kind.items())},
    }


def figures_by_pack(ranked: list[dict]) -> dict[str, dict]:
    packs = sorted({r["pack"] for r in ranked})
    out = {p: figures([r for r in ranked if r["pack"] == p]) for p in packs}
    out["all"] = figures(ranked)
    return out


def folds_of(rows: list[dict], folds: int, seed: int) -> dict[str, int]:
    """Object group -> fold: each pack's objects shuffled and dealt round the folds."""
    rng = random.Random(seed)
    fold: dict[str, int] = {}
    for pack in sorted({r["pack"] for r in rows}):
        groups = sorted({r["group"] for r in rows if r["pack"] == pack})
        rng.shuffle(groups)
        start = rng.randrange(folds)
        for i, g in enumerate(groups):
            fold[g] = (start + i) % folds
    return fold


def cross_validate(rows: list[dict], model: str, features: tuple[str, ...] = PAIR_FEATURES,
                   folds: int = FOLDS, seed: int = 2026) -> dict:
    """Object-grouped k-fold: every object's queries, in both views, scored by a fit that never saw it."""
    all_views = views(rows)
    fold = folds_of(all_views, folds, seed)
    held_out: list[dict] = []
    fits = []
    for f in range(folds):
        train = [r for r in all_views if fold[r["group"]] != f]
        test = [r for r in all_views if fold[r["group"]] == f]
        if not train or not test:
            continue
        cal = calibrate(train, model, features)
        fits.append({"fold": f, "match": cal.match, "possible": cal.possible,
                     "objects_held_out": len({r["group"] for r in test})})
        held_out.extend(rescore(test, cal))
    return {"folds": folds, "seed": seed, "features": list(features), "fits": fits,
            "figures": figures_by_pack(held_out), "objects": len(fold)}


def registry_evidence_earns_its_place(with_registry: dict, pair_only: dict) -> bool:
    """Do the registry's margins improve the held-out figures (all packs together) enough to be used?

    They must be at least as safe (false-match upper bound, wrong first answers called `match`), rank
    at least as well (recall@1), and find clearly more matches (match recall up by ``MIN_GAIN``);
    otherwise the verdict rests on the pair of photos alone.
    """
    r, p = with_registry, pair_only
    return ((r["false_match_rate_upper95"] or 0.0) <= (p["false_match_rate_upper95"] or 0.0)
            and r["wrong_first_answer_match"] <= p["wrong_first_answer_match"]
            and (r["recall@1"] or 0.0) >= (p["recall@1"] or 0.0)
            and (r["match_recall"] or 0.0) >= (p["match_recall"] or 0.0) + MIN_GAIN)


# --- a calibration from packs -----------------------------------------------------------------------

def pack_rows(pack: Path, settings: Settings, encoder: ImageEncoder, cache: Path | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """The pack's candidates with evidence, searched as the service searches (every verified
    candidate returned). Cached by pack content, model, settings and search code when ``cache`` is set."""
    from app.jobs.evaluate import evaluate_pack
    from app.pipeline.search import VERIFIED_CANDIDATES

    path = None
    if cache is not None:
        code = b"".join(p.read_bytes() for p in sorted(APP_CODE.rglob("*.py")))
        key = hashlib.sha256(
            (pack / "queries.jsonl").read_bytes() + (pack / "references.jsonl").read_bytes()
            + encoder.fingerprint.id.encode() + settings.model_dump_json().encode() + code
        ).hexdigest()[:16]
        path = cache / f"{pack.name}-{key}.jsonl"
        if path.exists():
            return [json.loads(line) for line in path.read_text().splitlines()]
    result = evaluate_pack(pack, settings, encoder=encoder, top_k=VERIFIED_CANDIDATES, progress=progress)
    rows = [{**r, "pack": pack.name} for r in result["candidates"]]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def fit_and_check(rows: list[dict], fingerprint: ModelFingerprint, packs: dict[str, dict], command: str,
                  folds: int = FOLDS, seed: int = 2026) -> Calibration:
    """The calibration to use, with its held-out figures: pair evidence, and the registry's margins
    only where object-grouped cross-validation shows they are at least as safe and find more."""
    compared = {name: cross_validate(rows, fingerprint.name, features, folds, seed)
                for name, features in (("pair", PAIR_FEATURES), ("pair+registry", PAIR_FEATURES + REGISTRY_FEATURES))}
    chosen = "pair+registry" if registry_evidence_earns_its_place(
        compared["pair+registry"]["figures"]["all"], compared["pair"]["figures"]["all"]) else "pair"
    features = tuple(compared[chosen]["features"])
    all_views = views(rows)
    cal = calibrate(all_views, fingerprint.name, features)
    source = {
        "fingerprint": fingerprint.id,
        "fitted": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "packs": packs,
        "features": list(features),
        "fit_nearest": FIT_NEAREST,
        "possible_recall": POSSIBLE_RECALL,
        "validation": f"object-grouped {folds}-fold cross-validation over {compared[chosen]['objects']} objects "
                      f"of all packs; every object's queries scored by a fit that never saw it, also as an "
                      f"unregistered object; false-match rates with Clopper-Pearson {CONFIDENCE:.0%} upper bounds",
        "figures_held_out": compared[chosen]["figures"],
        "feature_sets_held_out": {name: c["figures"]["all"] for name, c in compared.items()},
        "feature_set_chosen": chosen,
        "figures_on_fitting_data": figures_by_pack(rescore(all_views, cal)),
    }
    return replace(cal, source=source)
