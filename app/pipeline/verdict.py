"""The verdict: what the calibrated score may claim given the evidence about the two photos.

``match`` tells an officer "this is the registered object". The calibrated score says how alike the
two photos are on every kind of evidence; it is not enough on its own. A ``match`` must also rest on
evidence that the two photos show one surface:

- keypoints that agree on one geometric transform (``MIN_INLIERS``),
- spread over the object, not on a corner of it (``MIN_COVERAGE``): a shared logo, cap or rim is
  what look-alike products of one brand have in common,
- and, once aligned, agreement across the compared surface (``MIN_SURFACE``): a near twin that
  shares most of a design and differs in one region (another flavour, another die, a repainted
  patch) fails here.

A candidate that lacks any of these is at most ``possible``, whatever its score: looks alone,
or the registry's composition (the cosine margin over the next artefact), never make a match.
These are rules about the pair of photos, not thresholds fitted to a pack; docs/BENCHMARKS.md has
the figures that show where they hold (listing transforms, crops, twins, turntable views).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.pipeline.evidence import Evidence

if TYPE_CHECKING:
    from app.schemas import Verdict

MIN_INLIERS = 12
MIN_COVERAGE = 0.35
MIN_SURFACE = 0.85
MIN_SURFACE_CELLS = 6  # fewer compared cells say too little about the surface


def surface_agrees(agreement: float, cells: int) -> bool:
    """Enough of the object's surface compared, and agreeing."""
    return cells >= MIN_SURFACE_CELLS and agreement >= MIN_SURFACE


def same_object_shortfall(ev: Evidence) -> str | None:
    """Why the evidence does not show one surface, or None when it does."""
    if ev.inliers < MIN_INLIERS:
        return "no verified geometry" if ev.inliers == 0 else f"only {ev.inliers} keypoints agree"
    if ev.coverage < MIN_COVERAGE:
        return f"the agreeing keypoints span only {ev.coverage:.0%} of the object"
    if ev.surface_cells < MIN_SURFACE_CELLS:
        return "too little of the object's surface could be compared"
    if ev.surface < MIN_SURFACE:
        return f"the aligned surfaces differ in {1 - ev.surface:.0%} of the object"
    return None


def decide(score: float, ev: Evidence, match: float, possible: float) -> Verdict:
    """The verdict of a calibrated score, capped at ``possible`` without same-object evidence."""
    if score >= match and same_object_shortfall(ev) is None:
        return "match"
    if score >= possible:
        return "possible"
    return "no_match"


def evidence_line(ev: Evidence, verdict: Verdict, exact_reuse: bool = False) -> str:
    """One sentence for the officer: what the verdict rests on."""
    if exact_reuse:
        return "the photo re-uses a registry photo (same picture, resized or recompressed); aligned surface agrees"
    parts = []
    if ev.inliers:
        parts.append(f"{ev.inliers} keypoints agree over {ev.coverage:.0%} of the object")
    elif ev.matches:
        parts.append(f"{ev.matches} keypoints match but no single geometry explains them")
    else:
        parts.append("no keypoints agree")
    if ev.surface_cells:
        parts.append("aligned surface agrees" if ev.surface >= MIN_SURFACE
                     else f"aligned surface differs in {1 - ev.surface:.0%} of the object")
    parts.append(f"looks {'alike' if ev.cosine >= 0.8 else 'partly alike' if ev.cosine >= 0.6 else 'different'}"
                 f" (similarity {ev.cosine:.2f})")
    line = "; ".join(parts)
    shortfall = same_object_shortfall(ev)
    if verdict == "possible" and shortfall:
        line += f". At most possible: {shortfall}"
    return line
