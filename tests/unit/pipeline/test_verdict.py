"""The verdict's rules: what a `match` must rest on, and the sentence that says so."""

from __future__ import annotations

from app.pipeline.evidence import Evidence
from app.pipeline.verdict import MIN_COVERAGE, MIN_INLIERS, MIN_SURFACE, decide, evidence_line, same_object_shortfall

SAME = Evidence(0.92, 0.2, 0.95, 47, 0.1, 60, coverage=0.85, surface=0.97, surface_cells=64)


def with_(**changes) -> Evidence:
    from dataclasses import replace

    return replace(SAME, **changes)


def test_each_missing_piece_of_evidence_caps_the_verdict_at_possible():
    assert same_object_shortfall(SAME) is None
    assert decide(0.99, SAME, 0.9, 0.5) == "match"
    for ev, why in ((with_(inliers=0), "no verified geometry"), (with_(inliers=MIN_INLIERS - 1), "keypoints agree"),
                    (with_(coverage=MIN_COVERAGE / 2), "span only"), (with_(surface_cells=2), "surface"),
                    (with_(surface=MIN_SURFACE - 0.1), "differ")):
        assert why in (same_object_shortfall(ev) or ""), ev
        assert decide(0.99, ev, 0.9, 0.5) == "possible"
    assert decide(0.4, with_(inliers=0), 0.9, 0.5) == "no_match"


def test_the_evidence_line_says_what_the_verdict_rests_on():
    assert evidence_line(SAME, "match") == ("47 keypoints agree over 85% of the object; aligned surface agrees; "
                                            "looks alike (similarity 0.92)")
    twin = with_(surface=0.7)
    line = evidence_line(twin, "possible")
    assert "aligned surface differs in 30% of the object" in line and line.endswith("differ in 30% of the object")
    assert "no keypoints agree" in evidence_line(with_(inliers=0, matches=0, surface_cells=0), "possible")
    assert "re-uses a registry photo" in evidence_line(SAME, "match", exact_reuse=True)
