"""Local features and geometric verification (``app.pipeline.features``)."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from app.jobs.listing_transforms import perspective, textured_background
from app.pipeline.features import LocalFeatures, extract_features, verify_geometry
from tests.unit.pipeline.pictures import reopen, textured


def test_same_surface_under_rotation_and_perspective_has_many_inliers():
    ref = textured(1)
    query = reopen(perspective(ref.rotate(12, expand=True, fillcolor=(90, 90, 90)), random.Random(2)))
    same = verify_geometry(extract_features(query), extract_features(ref))
    other = verify_geometry(extract_features(query), extract_features(textured(7)))
    assert same.inliers >= 25, same
    assert other.inliers < 8, other
    assert same.box is not None


def test_geometry_box_says_where_in_the_query_the_object_is():
    ref = textured(3, size=(300, 220))
    canvas = textured_background((900, 500), random.Random(0))
    canvas.paste(ref, (540, 160))
    g = verify_geometry(extract_features(canvas), extract_features(ref))
    x0, y0, x1, y1 = g.box
    assert g.inliers >= 20
    assert 500 <= x0 and x1 <= 880 and 130 <= y0 and y1 <= 420


def test_features_survive_storage():
    f = extract_features(textured(4))
    g = LocalFeatures.from_bytes(f.to_bytes())
    assert g.size == f.size and len(g) == len(f)
    assert np.allclose(g.points, f.points, atol=0.5)
    assert np.allclose(np.linalg.norm(g.descriptors, axis=1), 1.0, atol=1e-3)
    assert verify_geometry(extract_features(reopen(textured(4))), g).inliers >= 25


def test_a_blank_photo_has_no_geometry_and_no_error():
    blank = Image.new("RGB", (200, 200), (128, 128, 128))
    assert verify_geometry(extract_features(blank), extract_features(textured(1))).inliers == 0
