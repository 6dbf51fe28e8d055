"""Aggregation per artefact, evidence and judging (``app.pipeline.match``)."""

from __future__ import annotations

import numpy as np

from app.pipeline.calibrate import Calibration
from app.pipeline.features import extract_features
from app.pipeline.match import Candidate, PhotoEvidence, aggregate_by_artefact, gather_evidence, judge, margins
from app.pipeline.signature import compute_signature
from tests.unit.pipeline.pictures import reopen, textured


def test_aggregation_keeps_the_best_photo_and_region_per_artefact():
    scores = np.array([0.9, 0.8, 0.85, 0.7, 0.95])
    photo_ids = np.array([1, 2, 3, 4, -1])
    owner = {1: 10, 2: 10, 3: 20, 4: 30}
    regions = np.array([0, 1, 1, 0, 0])
    cands = aggregate_by_artefact(scores, photo_ids, owner, top_k=2, regions=regions)
    assert [(c.artefact_id, c.photo_id, c.region) for c in cands] == [(10, 1, 0), (20, 3, 1)]
    assert cands[0].photo_ids == (1, 2)


def test_margins_compare_each_candidate_with_the_best_other():
    assert margins([0.9, 0.8, 0.5], 0.0) == [0.9 - 0.8, 0.8 - 0.9, 0.5 - 0.9]
    assert margins([0.7], 0.6) == [0.7 - 0.6]


def test_geometry_lifts_the_same_object_above_a_closer_lookalike():
    ref_same, ref_look = textured(21), textured(22)
    query = compute_signature(reopen(ref_same.rotate(10, fillcolor=(90, 90, 90))))
    photos = {pid: PhotoEvidence((sig := compute_signature(img, features=False)).colour, extract_features(img),
                                 sig.object_colour)
              for pid, img in ((1, ref_look), (2, ref_same))}
    # The lookalike has the higher embedding cosine; only verification can tell.
    cands = [Candidate(100, 1, 0.86, 0, (1,)), Candidate(200, 2, 0.84, 0, (2,))]
    cal = Calibration("test", {"cosine": 4.0, "margin": 10.0, "log_inliers": 1.5}, -6.0, 0.8, 0.5, 0.6)
    judged = judge(cands, gather_evidence(query, cands, photos, cal, verify=2), cal, [(0, 0, 480, 360)])
    assert judged[0].candidate.artefact_id == 200 and judged[0].evidence.inliers >= 20
    # Keypoints alone are not a match: the search also compares the aligned surfaces (test_surface.py).
    assert judged[0].verdict == "possible" and judged[1].verdict == "no_match"
    assert judged[0].evidence.coverage >= 0.5
    assert judged[0].box is not None and 0 <= judged[0].score <= 1
