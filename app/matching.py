"""From photo hits to artefact candidates with a verdict. Pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Thresholds:
    match: float
    possible: float

    def __post_init__(self):
        if self.possible > self.match:
            raise ValueError("the `possible` threshold must not exceed the `match` threshold")


@dataclass(frozen=True)
class Candidate:
    artefact_id: int
    photo_id: int
    score: float


def aggregate_by_artefact(
    scores: np.ndarray, photo_ids: np.ndarray, owner: dict[int, int], top_k: int
) -> list[Candidate]:
    """Keep the best-scoring photo of each artefact; return the top ``top_k`` artefacts."""
    best: dict[int, Candidate] = {}
    for score, pid in zip(scores.tolist(), photo_ids.tolist()):
        if pid < 0 or pid not in owner:  # -1: FAISS padding; missing owner: deleted meanwhile
            continue
        aid = owner[pid]
        if aid not in best or score > best[aid].score:
            best[aid] = Candidate(aid, int(pid), float(score))
    ranked = sorted(best.values(), key=lambda c: (-c.score, c.artefact_id))
    return ranked[:top_k]


def verdict_for(score: float, thresholds: Thresholds) -> str:
    if score >= thresholds.match:
        return "match"
    if score >= thresholds.possible:
        return "possible"
    return "no_match"
