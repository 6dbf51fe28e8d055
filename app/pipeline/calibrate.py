"""Calibrated score: the evidence about one candidate turned into P(same object) in [0, 1].

A logistic model over the candidate's evidence, fitted by ``scripts/calibrate.py`` on benchmark
packs and stored as JSON beside this module (``calibrations/<model>.json``) together with the data
it was fitted on. Verdict thresholds are on this score. A model with no calibration file gets a
conservative mapping of its cosine alone, and says so (``calibrated: false``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.schemas import Verdict

log = logging.getLogger(__name__)

CALIBRATION_DIR = Path(__file__).parent / "calibrations"

# The evidence a candidate gets; the names are the keys of the fitted weights.
FEATURES = ("cosine", "margin", "colour", "colour_margin", "log_inliers", "log_matches")


@dataclass(frozen=True)
class Evidence:
    cosine: float  # best embedding similarity between the query (or one of its regions) and the artefact's photos
    margin: float  # cosine minus the best cosine of any other artefact: is it the only one that looks like this?
    colour: float  # colour-signature similarity to the best photo (local features are colour-blind)
    inliers: int  # keypoint matches that agree on one geometric transform (0 when unverified)
    # colour minus the best colour of any other candidate: a recoloured query lowers every
    # candidate's colour alike, so the lead still tells which one has the object's colours.
    colour_margin: float = 0.0
    # keypoint pairs that are each other's nearest neighbours and pass the ratio test, before any
    # geometric model: on small objects seen from another side they survive where a homography fails.
    matches: int = 0

    def vector(self) -> dict[str, float]:
        return {"cosine": self.cosine, "margin": self.margin, "colour": self.colour,
                "colour_margin": self.colour_margin, "log_inliers": math.log1p(max(self.inliers, 0)),
                "log_matches": math.log1p(max(self.matches, 0))}


@dataclass(frozen=True)
class Calibration:
    model: str
    weights: dict[str, float]
    bias: float
    match: float  # score at or above which a candidate is a `match`
    possible: float  # score at or above which it is `possible`
    # Stand-in for "the best other artefact" when a search finds no other (e.g. a registry of one).
    background_cosine: float
    calibrated: bool = True
    source: dict = field(default_factory=dict)

    def score(self, evidence: Evidence) -> float:
        z = self.bias + sum(self.weights.get(k, 0.0) * v for k, v in evidence.vector().items())
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def verdict(self, score: float) -> Verdict:
        if score >= self.match:
            return "match"
        if score >= self.possible:
            return "possible"
        return "no_match"

    def with_thresholds(self, match: float | None, possible: float | None) -> "Calibration":
        m = self.match if match is None else match
        p = self.possible if possible is None else possible
        if p > m:
            raise ValueError("the `possible` threshold must not exceed the `match` threshold")
        return Calibration(self.model, self.weights, self.bias, m, p, self.background_cosine,
                           self.calibrated, self.source)

    def to_json(self) -> dict:
        return {"model": self.model, "fingerprint": self.source.get("fingerprint"), "weights": self.weights,
                "bias": self.bias, "match": self.match, "possible": self.possible,
                "background_cosine": self.background_cosine, "source": self.source}


def uncalibrated(model: str, match_cosine: float, possible_cosine: float) -> Calibration:
    """Cosine only, steep around the model's own thresholds: the old verdicts, on a 0-1 scale."""
    k = 25.0
    return Calibration(
        model=model, weights={"cosine": k}, bias=-k * match_cosine, match=0.5,
        possible=round(1.0 / (1.0 + math.exp(-k * (possible_cosine - match_cosine))), 4),
        background_cosine=0.0, calibrated=False,
        source={"note": "no calibration file for this model; verdicts follow fixed cosine thresholds"},
    )


def calibration_path(model: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return CALIBRATION_DIR / f"{safe}.json"


@lru_cache
def _read(path: str) -> dict | None:
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


def load_calibration(fingerprint, match_cosine: float, possible_cosine: float) -> Calibration:
    """The fitted calibration of this exact model (name, weights, preprocessing), else cosine only."""
    data = _read(str(calibration_path(fingerprint.name)))
    if data is None or data.get("fingerprint") != fingerprint.id:
        if data is not None:
            log.warning("Calibration %s was fitted for %s, not %s: using cosine thresholds.",
                        calibration_path(fingerprint.name).name, data.get("fingerprint"), fingerprint.id)
        return uncalibrated(fingerprint.name, match_cosine, possible_cosine)
    return Calibration(model=data["model"], weights=data["weights"], bias=data["bias"], match=data["match"],
                       possible=data["possible"], background_cosine=data["background_cosine"],
                       source=data.get("source", {}))
