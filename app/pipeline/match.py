"""From photo hits to judged artefact candidates. Pure functions, no I/O.

search hits -> ``aggregate_by_artefact`` -> ``gather_evidence`` (colour, geometry) ->
``surfaces_to_compare`` (the search compares their aligned surfaces, ``surface.py``) ->
``judge`` (calibrated score, verdict) -> ranked candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.pipeline.calibrate import Calibration, Evidence
from app.pipeline.features import NO_GEOMETRY, GeometryResult, LocalFeatures, single_threaded_blas, verify_geometry
from app.pipeline.signature import VisualSignature

if TYPE_CHECKING:
    from app.schemas import Verdict

# The first candidates are verified against their two best photos, the rest against their best one:
# a search may reach deep into the embedding's list (on near-identical coins a rotation moves the right
# one far down it) while spending most of its time where the right answer usually is.
PHOTOS_VERIFIED_PER_ARTEFACT = 2
DEEP_VERIFIED = 16


@dataclass(frozen=True)
class Candidate:
    artefact_id: int
    photo_id: int  # the artefact's best-scoring photo
    score: float  # its cosine
    region: int = 0  # which query region scored it (0: the whole frame)
    photo_ids: tuple[int, ...] = ()  # the artefact's photos among the hits, best first


@dataclass(frozen=True)
class PhotoEvidence:
    """What is stored about a registry photo for verification."""

    colour: np.ndarray
    features: LocalFeatures
    object_colour: np.ndarray


@dataclass
class Judged:
    candidate: Candidate
    evidence: Evidence
    score: float  # calibrated, in [0, 1]
    verdict: Verdict
    photo_id: int  # the registry photo that supports the verdict best
    box: tuple[int, int, int, int] | None = None  # where in the query the artefact was found
    exact_reuse: bool = False


def aggregate_by_artefact(
    scores: np.ndarray, photo_ids: np.ndarray, owner: dict[int, int], top_k: int,
    regions: np.ndarray | None = None,
) -> list[Candidate]:
    """Keep the best-scoring photo of each artefact; return the top ``top_k`` artefacts.

    ``scores``/``photo_ids`` may hold hits of several query regions (``regions`` says which).
    """
    best: dict[int, Candidate] = {}
    photos: dict[int, list[int]] = {}
    region_of = regions.tolist() if regions is not None else [0] * len(scores)
    for score, pid, region in sorted(zip(scores.tolist(), photo_ids.tolist(), region_of), key=lambda t: -t[0]):
        if pid < 0 or pid not in owner:  # -1: FAISS padding; missing owner: deleted meanwhile
            continue
        aid = owner[pid]
        if aid not in best:
            best[aid] = Candidate(aid, int(pid), float(score), int(region))
            photos[aid] = []
        if pid not in photos[aid]:
            photos[aid].append(int(pid))
    ranked = sorted(best.values(), key=lambda c: (-c.score, c.artefact_id))[:top_k]
    return [Candidate(c.artefact_id, c.photo_id, c.score, c.region, tuple(photos[c.artefact_id])) for c in ranked]


def margins(cosines: list[float], background: float) -> list[float]:
    """Each candidate's cosine minus the best cosine of any other candidate."""
    out = []
    for i, c in enumerate(cosines):
        others = cosines[:i] + cosines[i + 1:]
        out.append(c - max(others) if others else c - background)
    return out


def photos_to_check(candidates: list[Candidate], verify: int) -> list[tuple[int, ...]]:
    """Per candidate, the registry photos whose evidence is compared with the query's."""
    out = []
    for i, c in enumerate(candidates):
        per_artefact = PHOTOS_VERIFIED_PER_ARTEFACT if i < min(verify, DEEP_VERIFIED) else 1
        out.append(c.photo_ids[:per_artefact] or (c.photo_id,))
    return out


def gather_evidence(
    query: VisualSignature, candidates: list[Candidate], photos: dict[int, PhotoEvidence],
    calibration: Calibration, verify: int,
) -> list[tuple[Evidence, int, GeometryResult]]:
    """Colour and geometry for the first ``verify`` candidates; cosine, margins and colour for all.

    Returns, per candidate: its evidence, the photo that supports it best, and the geometry.
    """
    found = []
    with single_threaded_blas():
        for i, (c, checked) in enumerate(zip(candidates, photos_to_check(candidates, verify))):
            best_photo, geometry, colour, object_colour, matches = c.photo_id, NO_GEOMETRY, 0.0, 0.0, 0
            for pid in checked:
                ref = photos.get(pid)
                if ref is None:
                    continue
                colour = max(colour, float(np.dot(query.colour, ref.colour)))
                object_colour = max(object_colour, float(np.dot(query.object_colour, ref.object_colour)))
                if i < verify:
                    assert query.features is not None  # PhotoSearch extracts them before verification
                    g = verify_geometry(query.features, ref.features)
                    matches = max(matches, g.matches)
                    if g.inliers > geometry.inliers:
                        best_photo, geometry = pid, g
            found.append((colour, best_photo, geometry, matches, object_colour))
    cosine_margins = margins([c.score for c in candidates], calibration.background_cosine)
    colour_margins = margins([f[0] for f in found], 0.0)
    return [
        (Evidence(c.score, m, colour, geometry.inliers, cm, matches, geometry.coverage, object_colour=object_colour),
         best_photo, geometry)
        for c, m, cm, (colour, best_photo, geometry, matches, object_colour)
        in zip(candidates, cosine_margins, colour_margins, found)
    ]


# Aligned surfaces are compared for the few candidates whose geometry could make them a `match`:
# each comparison reads the registry photo (a few milliseconds), and a search has one right answer.
SURFACES_COMPARED = 3


def surfaces_to_compare(evidence: list[tuple[Evidence, int, GeometryResult]], min_inliers: int) -> list[int]:
    """Indices of the candidates whose aligned surfaces are worth comparing: most inliers first."""
    eligible = [i for i, (ev, _, g) in enumerate(evidence) if g.homography is not None and ev.inliers >= min_inliers]
    return sorted(eligible, key=lambda i: -evidence[i][0].inliers)[:SURFACES_COMPARED]


def judge(candidates: list[Candidate], evidence: list[tuple[Evidence, int, GeometryResult]],
          calibration: Calibration, boxes: list[tuple[int, int, int, int]]) -> list[Judged]:
    """Calibrated score and verdict per candidate, best first.

    ``boxes[i]`` is query region ``i``; a verified candidate's box is where its keypoints matched.
    """
    judged = []
    for c, (ev, photo_id, geometry) in zip(candidates, evidence):
        score = calibration.score(ev)
        box = geometry.box if geometry.box is not None else (boxes[c.region] if c.region < len(boxes) else None)
        judged.append(Judged(c, ev, score, calibration.verdict(score, ev), photo_id, box))
    judged.sort(key=lambda j: (-j.score, -j.evidence.cosine, j.candidate.artefact_id))
    return judged
