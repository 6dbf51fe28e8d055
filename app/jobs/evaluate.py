"""``heritage-match evaluate PACK``: same-object retrieval measured on a benchmark pack.

The pack's references are registered in a throw-away data directory and every query goes through
``MatchingService.search``, the code path of the API. Pack format: ``../shared/benchmarks/README.md``.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from app.core.config import Settings
from app.core.errors import AppError
from app.core.jsonl import object_lines
from app.embedding import ImageEncoder, create_encoder
from app.schemas import SearchResult
from app.service import MatchingService, PhotoInput

KS = (1, 5, 10)


class PackError(AppError):
    """A benchmark pack that does not follow the format: which file, which line, what is wrong."""

    code = "bad_pack"


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise PackError(f"{path} is missing: a pack holds references.jsonl and queries.jsonl "
                        "(format: ../shared/benchmarks/README.md)")
    rows = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, row, error in object_lines(f):
                if error:
                    raise PackError(f"{path.name} line {n}: {error}")
                assert row is not None  # an object comes with no error
                rows.append((n, row))
    except UnicodeDecodeError as exc:
        raise PackError(f"{path.name} is not UTF-8 text ({exc.reason})") from None
    return [_checked(path.name, n, row) for n, row in rows]


def _checked(name: str, line: int, row: dict) -> dict:
    """The fields the format requires, with their types (a string where a list belongs was read letter by letter)."""
    where = f"{name} line {line}"
    if not isinstance(row.get("path"), str) or not row["path"].strip():
        raise PackError(f"{where}: `path` (the photo's path in the pack) is missing")
    if name == "references.jsonl":
        if not isinstance(row.get("object_id"), (str, int)) or not str(row["object_id"]).strip():
            raise PackError(f"{where}: `object_id` is missing")
    else:
        for key in ("object_ids", "tags"):
            value = row.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
                raise PackError(f"{where}: `{key}` must be a list of strings")
    return row


def reference_photos(pack: Path) -> dict[str, str]:
    """Object id -> the path of its first reference photo in the pack."""
    out: dict[str, str] = {}
    for r in read_jsonl(Path(pack) / "references.jsonl"):
        out.setdefault(str(r["object_id"]), r["path"])
    return out


def _read_photo(pack: Path, rel: str) -> bytes:
    try:
        return (pack / rel).read_bytes()
    except OSError as exc:
        raise PackError(f"{rel}: the photo cannot be read ({exc.strerror or exc})") from None


def write_report(result: dict, pack: Path, out: Path) -> None:
    from app.jobs.evaluate_report import render_report

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(result, pack, reference_photos(pack)), encoding="utf-8")


def evaluate_pack(
    pack: Path,
    settings: Settings,
    encoder: ImageEncoder | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    top_k: int = max(KS),
) -> dict:
    pack = Path(pack)
    refs = read_jsonl(pack / "references.jsonl")
    queries = read_jsonl(pack / "queries.jsonl")
    encoder = encoder or create_encoder(settings)
    with tempfile.TemporaryDirectory(prefix="hm-eval-") as tmp:
        run_settings = settings.model_copy(update={"data_dir": Path(tmp), "database_url": None})
        service = MatchingService(run_settings, encoder=encoder).start()
        try:
            by_object: dict[str, list[dict]] = defaultdict(list)
            for r in refs:
                by_object[str(r["object_id"])].append(r)
            id_of: dict[int, str] = {}
            for i, (object_id, rows) in enumerate(by_object.items(), start=1):
                photos = [PhotoInput(_read_photo(pack, r["path"]), label=r["path"]) for r in rows]
                title = next((r.get("title") for r in rows if r.get("title")), None)
                artefact = service.register_artefact({"inventory_number": object_id, "title": title}, photos)
                id_of[artefact.id] = object_id
                if progress:
                    progress("register", i, len(by_object))
            return _score_queries(service, pack, queries, id_of, progress, max(top_k, max(KS)))
        finally:
            service.close()


def _candidate_rows(query: dict, expected: list[str], results: list[SearchResult],
                    id_of: dict[int, str]) -> list[dict]:
    """Every returned candidate with its evidence and whether it is right: the calibration's data."""
    rows = []
    for rank, r in enumerate(results, start=1):
        ev = r.evidence
        rows.append({
            "query": query["path"], "rank": rank, "object_id": id_of.get(r.artefact_id), "expected": expected,
            "tags": query.get("tags", []),
            "label": int(id_of.get(r.artefact_id) in expected), "open_set": not expected,
            "exact_reuse": ev.exact_reuse, "cosine": ev.cosine, "margin": ev.margin, "colour": ev.colour,
            "colour_margin": ev.colour_margin, "object_colour": ev.object_colour, "matches": ev.matches,
            "inliers": ev.inliers, "coverage": ev.coverage, "surface": ev.surface,
            "surface_cells": ev.surface_cells, "score": r.score,
            "verdict": r.verdict, "photo_id": r.photo_id,
        })
    return rows


def _score_queries(service: MatchingService, pack: Path, queries: list[dict], id_of: dict[int, str],
                   progress: Callable[[str, int, int], None] | None, top_k: int) -> dict:
    hits = {k: 0 for k in KS}
    pairs = 0
    ap_sum = 0.0
    latencies: list[float] = []
    open_set = open_set_false = 0
    match_found = 0
    tag_stats: dict[str, dict[str, int]] = defaultdict(lambda: {"pairs": 0, "hits@1": 0})
    failures = []
    errors = []
    candidates: list[dict] = []
    for n, q in enumerate(queries, start=1):
        try:
            data = _read_photo(pack, q["path"])
            t0 = time.perf_counter()
            response = service.search(data, top_k=top_k)
        except AppError as exc:  # an unreadable or missing query photo is counted, the rest is measured
            errors.append({"query": q["path"], "error": exc.message})
            continue
        latencies.append((time.perf_counter() - t0) * 1000)
        ranked = [id_of.get(r.artefact_id) for r in response.results]
        verdicts = {id_of.get(r.artefact_id): r.verdict for r in response.results}
        expected = [str(o) for o in q.get("object_ids", [])]
        candidates.extend(_candidate_rows(q, expected, response.results, id_of))
        top = ({"got_score": response.results[0].score, "got_verdict": response.results[0].verdict,
                "got_summary": response.results[0].evidence.summary} if response.results else {})
        if not expected:
            open_set += 1
            if response.results and response.results[0].verdict == "match":
                open_set_false += 1
                failures.append({"query": q["path"], "expected": [], "got": ranked[:3], "kind": "false_match", **top})
        for obj in expected:
            pairs += 1
            # Filtered rank: other objects that are also in the photo (a lot) do not push this one
            # down, so a photo of two registered objects answered with both first scores 1 for each.
            rank = (1 + sum(1 for r in ranked[:ranked.index(obj)] if r not in expected)) if obj in ranked else None
            for k in KS:
                hits[k] += int(rank is not None and rank <= k)
            ap_sum += 1.0 / rank if rank else 0.0  # one relevant artefact per pair: AP = 1/rank
            match_found += int(verdicts.get(obj) == "match")
            for tag in q.get("tags", []) or ["untagged"]:
                tag_stats[tag]["pairs"] += 1
                tag_stats[tag]["hits@1"] += int(rank == 1)
            if rank != 1:
                failures.append({"query": q["path"], "expected": obj, "got": ranked[:3], "rank": rank, "kind": "miss",
                                 **top})
        if progress:
            progress("search", n, len(queries))
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {
        "model": service.fingerprint,
        "queries": len(queries),
        "pairs": pairs,
        **{f"recall@{k}": round(hits[k] / pairs, 4) if pairs else None for k in KS},
        "mAP": round(ap_sum / pairs, 4) if pairs else None,
        "open_set_queries": open_set,
        "false_match_rate": round(open_set_false / open_set, 4) if open_set else None,
        "match_recall": round(match_found / pairs, 4) if pairs else None,
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 1),
        "per_tag": {
            t: {"pairs": s["pairs"], "recall@1": round(s["hits@1"] / s["pairs"], 4)}
            for t, s in sorted(tag_stats.items())
        },
        "errors": errors,
        "failures": failures,
        "candidates": candidates,
    }
