"""Calibrated score: the evidence about one candidate turned into P(same object) in [0, 1].

A logistic model over the candidate's evidence, fitted by ``scripts/calibrate.py`` on benchmark
packs and stored as JSON beside this module (``calibrations/<model>.json``) together with the data
it was fitted on, or fitted on a registry of its own by ``heritage-match calibrate`` and stored in
the data directory (``<HM_DATA_DIR>/calibrations/<model>.json``), which then takes precedence. Either
is used only for the exact model it was fitted for (its fingerprint). Verdict thresholds are on this
score. A model with no calibration file gets a conservative mapping of its cosine alone, and says so
(``calibrated: false``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from app.pipeline.evidence import FEATURES, Evidence
from app.pipeline.verdict import decide

if TYPE_CHECKING:
    from app.schemas import Verdict

__all__ = ["FEATURES", "Calibration", "Evidence", "calibration_path", "data_calibration_path", "load_calibration",
           "uncalibrated"]

log = logging.getLogger(__name__)

CALIBRATION_DIR = Path(__file__).parent / "calibrations"
# Where the calibration in force came from: fitted on this registry (``heritage-match calibrate``,
# ``<HM_DATA_DIR>/calibrations/<model>.json``), shipped beside this module, or none (cosine only).
ORIGINS = ("data-dir", "shipped", "none")
# The held-out figures /healthz and the case report show, per pack.
HELD_OUT_FIGURES = ("recall@1", "match_recall", "false_match_rate", "false_match_rate_upper95")

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
    # Where it was loaded from (``ORIGINS``); not stored in the file.
    origin: str = "shipped"

    def score(self, evidence: Evidence) -> float:
        z = self.bias + sum(self.weights.get(k, 0.0) * v for k, v in evidence.vector().items())
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def verdict(self, score: float, evidence: Evidence) -> Verdict:
        """``match`` needs the score and evidence that the photos show one surface (``verdict.decide``)."""
        return decide(score, evidence, self.match, self.possible)

    def with_thresholds(self, match: float | None, possible: float | None) -> "Calibration":
        m = self.match if match is None else match
        p = self.possible if possible is None else possible
        if p > m:
            raise ValueError("the `possible` threshold must not exceed the `match` threshold")
        return Calibration(self.model, self.weights, self.bias, m, p, self.background_cosine,
                           self.calibrated, self.source, self.origin)

    def to_json(self) -> dict:
        return {"model": self.model, "fingerprint": self.source.get("fingerprint"), "weights": self.weights,
                "bias": self.bias, "match": self.match, "possible": self.possible,
                "background_cosine": self.background_cosine, "source": self.source}

    def describe(self) -> str:
        """Which calibration is in force, in a few words: ``data-dir, fitted 2026-12-07T12:00:00Z``."""
        if not self.calibrated:
            return "none: fixed cosine thresholds"
        fitted = self.source.get("fitted")
        return f"{self.origin}, fitted {fitted}" if fitted else self.origin

    def held_out(self) -> dict[str, dict[str, float | None]]:
        """Per pack, the figures on objects the fit never saw (``source.figures_held_out``); {} if none."""
        figures = self.source.get("figures_held_out") or {}
        return {pack: {k: f.get(k) for k in HELD_OUT_FIGURES}
                for pack, f in figures.items() if isinstance(f, dict)}


def uncalibrated(model: str, match_cosine: float, possible_cosine: float) -> Calibration:
    """Cosine only, steep around the model's own thresholds: the old verdicts, on a 0-1 scale."""
    k = 25.0
    return Calibration(
        model=model, weights={"cosine": k}, bias=-k * match_cosine, match=0.5,
        possible=round(1.0 / (1.0 + math.exp(-k * (possible_cosine - match_cosine))), 4),
        background_cosine=0.0, calibrated=False,
        source={"note": "no calibration file for this model; verdicts follow fixed cosine thresholds"},
        origin="none",
    )


def calibration_file_name(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model) + ".json"


def calibration_path(model: str) -> Path:
    """The calibration shipped with the code for ``model``."""
    return CALIBRATION_DIR / calibration_file_name(model)


def data_calibration_path(data_dir: Path, model: str) -> Path:
    """The calibration fitted on the registry of ``data_dir`` (``heritage-match calibrate``) for ``model``."""
    return Path(data_dir) / "calibrations" / calibration_file_name(model)


@lru_cache
def _read(path: str, stamp: tuple[int, int] | None = None) -> dict | None:
    """The file's JSON; ``stamp`` (modification time, size) makes a rewritten file be read again."""
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


def _load(path: Path, fingerprint, origin: str) -> Calibration | None:
    """The calibration in ``path`` when it was fitted for this exact model, else None (with a warning
    when there is a file that cannot be used)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    try:
        data = _read(str(path), (stat.st_mtime_ns, stat.st_size))
        if data is None:
            return None
        if data.get("fingerprint") != fingerprint.id:
            log.warning("Calibration %s was fitted for %s, not %s: not used.", path, data.get("fingerprint"),
                        fingerprint.id)
            return None
        return Calibration(model=data["model"], weights=data["weights"], bias=data["bias"], match=data["match"],
                           possible=data["possible"], background_cosine=data["background_cosine"],
                           source=data.get("source", {}), origin=origin)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("Calibration %s cannot be read (%s): not used.", path, exc)
        return None


def load_calibration(fingerprint, match_cosine: float, possible_cosine: float,
                     data_dir: Path | None = None) -> Calibration:
    """The fitted calibration of this exact model (name, weights, preprocessing): first the one fitted
    on this registry (``<data_dir>/calibrations/<model>.json``), then the shipped one, else cosine only."""
    if data_dir is not None:
        fitted = _load(data_calibration_path(data_dir, fingerprint.name), fingerprint, "data-dir")
        if fitted is not None:
            return fitted
    shipped = _load(calibration_path(fingerprint.name), fingerprint, "shipped")
    if shipped is not None:
        return shipped
    log.info("No calibration for %s: verdicts follow fixed cosine thresholds.", fingerprint.id)
    return uncalibrated(fingerprint.name, match_cosine, possible_cosine)
