"""The evidence about one candidate: what is known about the query photo and one registry artefact.

Pair evidence (cosine, colour, keypoints, coverage, surface) is about the two photos; the margins
are about the registry (how far ahead of the next artefact the candidate is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The names are the keys of the fitted weights.
FEATURES = ("cosine", "margin", "colour", "colour_margin", "log_inliers", "log_matches", "coverage", "surface",
            "object_colour")


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
    # Share of the object's visible extent the inliers span (``features.coverage``).
    coverage: float = 0.0
    # Share of the aligned object's cells whose surfaces agree (``surface.compare_surface``), and how
    # many cells were compared (0: not compared).
    surface: float = 0.0
    surface_cells: int = 0
    # Colour similarity of the object alone (background left out) to the best photo: objects of one
    # kind seen from another side (six white cups, six red apples) differ in little else.
    object_colour: float = 0.0

    def vector(self) -> dict[str, float]:
        return {"cosine": self.cosine, "margin": self.margin, "colour": self.colour,
                "colour_margin": self.colour_margin, "log_inliers": math.log1p(max(self.inliers, 0)),
                "log_matches": math.log1p(max(self.matches, 0)), "coverage": self.coverage,
                "surface": self.surface if self.surface_cells else 0.0, "object_colour": self.object_colour}


