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


# Evidence that the two photos show one surface: enough inliers, spread over the object, surfaces agreeing.
SAME_SURFACE = Evidence(0.9, 0.1, 0.9, 80, 0.1, 100, coverage=0.9, surface=1.0, surface_cells=60)


def test_verdicts_follow_the_thresholds_and_settings_override_them():
    cal = fitted()
    assert [cal.verdict(s, SAME_SURFACE) for s in (0.95, 0.9, 0.7, 0.49)] == ["match", "match", "possible", "no_match"]
    strict = cal.with_thresholds(0.99, None)
    assert strict.verdict(0.95, SAME_SURFACE) == "possible" and strict.possible == 0.5
    with pytest.raises(ValueError, match="possible"):
        cal.with_thresholds(0.4, 0.6)


def test_uncalibrated_model_keeps_its_cosine_thresholds():
    cal = uncalibrated("m", match_cosine=0.85, possible_cosine=0.75)
    assert not cal.calibrated

    def verdict(cosine: float) -> str:
        ev = Evidence(cosine, 0.0, 0.0, 80, coverage=0.9, surface=1.0, surface_cells=60)
        return cal.verdict(cal.score(ev), ev)

    assert [verdict(c) for c in (0.86, 0.80, 0.70)] == ["match", "possible", "no_match"]


def test_looks_alone_never_make_a_match():
    """Without keypoints agreeing over the object and agreeing surfaces, the best score is `possible`."""
    cal = fitted()
    lookalike = Evidence(0.99, 0.3, 1.0, 0, 0.3, 0)
    corner = Evidence(0.99, 0.3, 1.0, 60, 0.3, 80, coverage=0.1, surface=1.0, surface_cells=60)
    twin = Evidence(0.99, 0.3, 1.0, 150, 0.3, 200, coverage=0.95, surface=0.7, surface_cells=60)
    for ev in (lookalike, corner, twin):
        assert cal.score(ev) >= cal.match
        assert cal.verdict(cal.score(ev), ev) == "possible"
    assert cal.verdict(cal.score(SAME_SURFACE), SAME_SURFACE) == "match"


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


# --- which calibration is in force: the registry's own, the shipped one, or none ---------------------

def _write(path, fingerprint: str, fitted_at: str, **source) -> None:
    """A calibration file of model ``m`` fitted for ``fingerprint``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**fitted().to_json(), "fingerprint": fingerprint,
            "source": {"fingerprint": fingerprint, "fitted": fitted_at, **source}}
    path.write_text(json.dumps(data))


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch):
    import app.pipeline.calibrate as calibration

    folder = tmp_path / "shipped"
    folder.mkdir()
    monkeypatch.setattr(calibration, "CALIBRATION_DIR", folder)
    calibration._read.cache_clear()
    yield folder
    calibration._read.cache_clear()


HELD_OUT = {"registry-listing": {"queries": 80, "recall@1": 0.95, "match_recall": 0.9, "false_match_rate": 0.0,
                                 "false_match_rate_upper95": 0.0445, "open_set_queries": 81},
            "all": {"recall@1": 0.95, "match_recall": 0.9, "false_match_rate": 0.0, "false_match_rate_upper95": 0.0445}}


def test_the_registrys_own_calibration_wins_over_the_shipped_one(tmp_path, shipped_dir):
    from app.pipeline.calibrate import data_calibration_path

    fp = FakeFingerprint("m", "m@aaaa")
    data_dir = tmp_path / "data"
    assert data_calibration_path(data_dir, "clip:ViT-B-32:x") == data_dir / "calibrations" / "clip_ViT-B-32_x.json"
    _write(shipped_dir / "m.json", "m@aaaa", "2026-01-01T00:00:00Z")
    _write(data_calibration_path(data_dir, "m"), "m@aaaa", "2026-12-07T12:00:00Z", figures_held_out=HELD_OUT)
    cal = load_calibration(fp, 0.85, 0.75, data_dir)
    assert cal.calibrated and cal.origin == "data-dir"
    assert cal.describe() == "data-dir, fitted 2026-12-07T12:00:00Z"
    assert cal.held_out()["registry-listing"] == {"recall@1": 0.95, "match_recall": 0.9, "false_match_rate": 0.0,
                                                  "false_match_rate_upper95": 0.0445}
    assert "origin" not in cal.to_json()  # where it was read from is not part of the file
    assert cal.with_thresholds(0.95, None).origin == "data-dir"
    # Without a data directory (or with another one) the shipped calibration is in force.
    for other in (None, tmp_path / "elsewhere"):
        shipped = load_calibration(fp, 0.85, 0.75, other)
        assert shipped.origin == "shipped" and shipped.describe() == "shipped, fitted 2026-01-01T00:00:00Z"
        assert shipped.held_out() == {}


def test_a_registry_calibration_of_other_weights_is_ignored_with_a_warning(tmp_path, shipped_dir, caplog):
    from app.pipeline.calibrate import data_calibration_path

    data_dir = tmp_path / "data"
    _write(data_calibration_path(data_dir, "m"), "m@bbbb", "2026-12-07T12:00:00Z")
    _write(shipped_dir / "m.json", "m@aaaa", "2026-01-01T00:00:00Z")
    cal = load_calibration(FakeFingerprint("m", "m@aaaa"), 0.85, 0.75, data_dir)
    assert cal.origin == "shipped" and cal.calibrated
    assert "fitted for m@bbbb" in caplog.text and "calibrations" in caplog.text
    # Neither fits the model: cosine thresholds, and it says so.
    none = load_calibration(FakeFingerprint("m", "m@cccc"), 0.85, 0.75, data_dir)
    assert not none.calibrated and none.origin == "none"
    assert none.describe() == "none: fixed cosine thresholds" and none.held_out() == {}


def test_no_calibration_anywhere_is_cosine_only(tmp_path, shipped_dir):
    cal = load_calibration(FakeFingerprint("m", "m@aaaa"), 0.85, 0.75, tmp_path / "data")
    assert not cal.calibrated and cal.origin == "none"


def test_an_unreadable_registry_calibration_falls_back_to_the_shipped_one(tmp_path, shipped_dir, caplog):
    from app.pipeline.calibrate import data_calibration_path

    data_dir = tmp_path / "data"
    path = data_calibration_path(data_dir, "m")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    _write(shipped_dir / "m.json", "m@aaaa", "2026-01-01T00:00:00Z")
    assert load_calibration(FakeFingerprint("m", "m@aaaa"), 0.85, 0.75, data_dir).origin == "shipped"
    assert "cannot be read" in caplog.text
    # Rewritten in place (a new fit), it is read again: not a stale cached copy.
    _write(path, "m@aaaa", "2026-12-08T00:00:00Z")
    assert load_calibration(FakeFingerprint("m", "m@aaaa"), 0.85, 0.75, data_dir).origin == "data-dir"


def test_health_shows_the_calibration_in_force(tmp_path, shipped_dir):
    from app.api.presenters import calibration_status

    assert calibration_status(uncalibrated("m", 0.85, 0.75)).model_dump(exclude_none=True) == {"origin": "none"}
    _write(shipped_dir / "m.json", "m@aaaa", "2026-01-01T00:00:00Z", figures_held_out=HELD_OUT)
    status = calibration_status(load_calibration(FakeFingerprint("m", "m@aaaa"), 0.85, 0.75, tmp_path / "data"))
    assert (status.origin, status.fitted, status.path) == ("shipped", "2026-01-01T00:00:00Z", "m.json")
    assert status.held_out is not None and status.held_out["all"]["false_match_rate_upper95"] == 0.0445


def test_a_running_search_takes_up_a_new_registry_calibration(tmp_path, shipped_dir, monkeypatch):
    """``heritage-match calibrate`` writes while ``serve`` runs: the next searches use the new fit."""
    import app.pipeline.search as search
    from app.core.config import Settings
    from app.pipeline.calibrate import data_calibration_path

    class StubEncoder:
        fingerprint = FakeFingerprint("m", "m@aaaa")
        match_threshold, possible_threshold = 0.85, 0.75

    _write(shipped_dir / "m.json", "m@aaaa", "2026-01-01T00:00:00Z")
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    searcher = search.PhotoSearch(settings, store=None, encoder=StubEncoder(), index=lambda: None)  # type: ignore[arg-type]
    assert searcher.calibration.origin == "shipped"
    monkeypatch.setattr(search, "CALIBRATION_RECHECK_S", 0.0)
    path = data_calibration_path(settings.data_dir, "m")
    _write(path, "m@aaaa", "2026-12-07T12:00:00Z")
    assert searcher.calibration.describe() == "data-dir, fitted 2026-12-07T12:00:00Z"
    path.unlink()  # deleted: back to the shipped one
    assert searcher.calibration.origin == "shipped"
