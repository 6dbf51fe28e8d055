"""The calibrated score: monotone in the evidence, thresholds as configured, the shipped fit in use."""

from __future__ import annotations

import json

import pytest

from app.pipeline.calibrate import Calibration, Evidence, calibration_path, load_calibration, uncalibrated


def fitted() -> Calibration:
    return Calibration("m", {"cosine": 5.0, "margin": 20.0, "colour": 1.0, "colour_margin": 2.0,
                             "log_inliers": 1.2}, -8.0, match=0.9, possible=0.5, background_cosine=0.6)


def test_more_evidence_never_lowers_the_score():
    cal = fitted()
    base = Evidence(cosine=0.8, margin=0.05, colour=0.9, inliers=0, colour_margin=0.0)
    better = [Evidence(0.85, 0.05, 0.9, 0, 0.0), Evidence(0.8, 0.1, 0.9, 0, 0.0), Evidence(0.8, 0.05, 0.95, 0, 0.0),
              Evidence(0.8, 0.05, 0.9, 40, 0.0), Evidence(0.8, 0.05, 0.9, 0, 0.1)]
    for ev in better:
        assert cal.score(ev) > cal.score(base)
    assert 0.0 < cal.score(base) < 1.0
    assert cal.score(Evidence(1.0, 1.0, 1.0, 10**6, 1.0)) <= 1.0


def test_verdicts_follow_the_thresholds_and_settings_override_them():
    cal = fitted()
    assert [cal.verdict(s) for s in (0.95, 0.9, 0.7, 0.49)] == ["match", "match", "possible", "no_match"]
    strict = cal.with_thresholds(0.99, None)
    assert strict.verdict(0.95) == "possible" and strict.possible == 0.5
    with pytest.raises(ValueError, match="possible"):
        cal.with_thresholds(0.4, 0.6)


def test_uncalibrated_model_keeps_its_cosine_thresholds():
    cal = uncalibrated("m", match_cosine=0.85, possible_cosine=0.75)
    assert not cal.calibrated
    assert cal.verdict(cal.score(Evidence(0.86, 0.0, 0.0, 0))) == "match"
    assert cal.verdict(cal.score(Evidence(0.80, 0.0, 0.0, 0))) == "possible"
    assert cal.verdict(cal.score(Evidence(0.70, 0.0, 0.0, 0))) == "no_match"


class FakeFingerprint:
    def __init__(self, name, id):
        self.name, self.id = name, id


def test_a_calibration_fitted_for_other_weights_is_not_used(tmp_path, monkeypatch, caplog):
    import app.pipeline.calibrate as calibration

    monkeypatch.setattr(calibration, "CALIBRATION_DIR", tmp_path)
    calibration._read.cache_clear()
    data = {**fitted().to_json(), "fingerprint": "m@aaaa"}
    (tmp_path / "m.json").write_text(json.dumps(data))
    assert load_calibration(FakeFingerprint("m", "m@aaaa"), 0.85, 0.75).calibrated
    other = load_calibration(FakeFingerprint("m", "m@bbbb"), 0.85, 0.75)
    assert not other.calibrated and "fitted for m@aaaa" in caplog.text
    calibration._read.cache_clear()


def test_the_offline_model_ships_a_calibration_for_its_exact_weights(encoder):
    """A changed preprocessing or weights file must come with a refit (scripts/calibrate.py)."""
    path = calibration_path(encoder.fingerprint.name)
    assert path.is_file(), f"no calibration at {path}"
    data = json.loads(path.read_text())
    assert data["fingerprint"] == encoder.fingerprint.id
    assert 0 < data["possible"] <= data["match"] < 1
    assert data["source"]["packs"], "the calibration must say which data it was fitted on"
    cal = load_calibration(encoder.fingerprint, encoder.match_threshold, encoder.possible_threshold)
    assert cal.calibrated
