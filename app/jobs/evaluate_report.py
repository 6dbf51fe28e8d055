"""The evaluation as one self-contained HTML page: figures, per-tag recall, and every failure shown
side by side (query, what the system answered, what it should have answered), and the query aligned
onto each registry photo with the cells where their surfaces differ marked.

Thumbnails are embedded as data: URIs so the page opens from disk and can be archived with the run.
The page is the template ``app/jobs/templates/evaluate_report.html``; this module computes what it shows.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from app.core.errors import AppError
from app.jobs import reports

THUMB = 160
SUMMARY_KEYS = ("model", "queries", "pairs", "recall@1", "recall@5", "recall@10", "mAP", "open_set_queries",
                "false_match_rate", "match_recall", "latency_ms_p50", "latency_ms_p95")


class Figure(NamedTuple):
    src: str  # a data: URI, or "" when there is no photo to show
    caption: str


class Failure(NamedTuple):
    kind: str
    verdict: str
    figures: list[Figure]  # the query, the answer, the expected object


def thumbnail_uri(path: Path) -> str:
    """A small JPEG of the photo as a data: URI; a photo that cannot be read gets no picture."""
    try:
        with Image.open(path) as photo:
            img = photo.convert("RGB")
            img.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
    except (OSError, ValueError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(path: Path | None, caption: str) -> Figure:
    return Figure(thumbnail_uri(path) if path else "", caption)


def _uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def aligned_figure(query: Path, reference: Path | None, label: str) -> Figure:
    """The reference beside the query warped onto it (cells whose surfaces differ in red), as the
    verification sees them; a caption that says so when the two photos cannot be aligned."""
    from app.pipeline.decode import decode_image
    from app.pipeline.features import extract_features, verify_geometry
    from app.pipeline.surface import aligned_view

    if reference is None:
        return Figure("", "")
    try:
        q = decode_image(query.read_bytes()).image
        r = decode_image(reference.read_bytes()).image
    except (OSError, ValueError, AppError):
        return Figure("", f"{label}: a photo cannot be read")
    qf, rf = extract_features(q), extract_features(r)
    g = verify_geometry(qf, rf)
    if g.homography is None:
        return Figure("", f"{label}: no single geometry aligns the two photos ({g.matches} keypoint matches)")
    view = aligned_view(q, r, g.homography, qf.size, rf.size, rf.points, side=2 * THUMB)
    return Figure(_uri(view), f"{label}: registry photo | query aligned onto it; {g.inliers} keypoints agree "
                              f"over {g.coverage:.0%} of the object; red cells differ")


def render_report(result: dict, pack: Path, reference_of: dict[str, str], aligned: bool = True) -> str:
    """``reference_of``: object id -> path (relative to the pack) of one of its reference photos.
    ``aligned``: show each failure's photos aligned as the verification saw them."""
    pack = Path(pack)

    def ref(obj: str | None) -> Path | None:
        return pack / reference_of[obj] if obj in reference_of else None

    failures = []
    failed = result.get("failures")
    for f in failed if isinstance(failed, list) else []:
        got = f.get("got") or []
        answer = got[0] if got else None
        verdict = f.get("got_verdict", "")
        score = f.get("got_score")
        kind = "false match (object not registered)" if f.get("kind") == "false_match" else (
            f"expected object at rank {f.get('rank')}" if f.get("rank") else "expected object not in the results")
        figures = [
            _figure(pack / f["query"], f"query {f['query']}"),
            _figure(ref(answer), f"answer: {answer} " + (f"({score:.3f}, {verdict})" if score is not None else "")
                    + (f" — {f['got_summary']}" if f.get("got_summary") else "")),
            _figure(ref(f.get("expected")) if f.get("expected") else None,
                    f"expected: {f.get('expected') or 'none (unregistered)'}"),
        ]
        if aligned:
            figures.append(aligned_figure(pack / f["query"], ref(answer), "answer aligned"))
            if f.get("expected") and f.get("expected") != answer:
                figures.append(aligned_figure(pack / f["query"], ref(f["expected"]), "expected aligned"))
        failures.append(Failure(kind, verdict, [fig for fig in figures if fig.src or fig.caption]))
    return reports.render(
        "evaluate_report.html",
        pack_name=pack.name,
        summary=[(k, result.get(k)) for k in SUMMARY_KEYS],
        per_tag=[(t, s["pairs"], s["recall@1"]) for t, s in result.get("per_tag", {}).items()],
        failures=failures,
        errors=[(e["query"], e["error"]) for e in result.get("errors", [])],
    )
