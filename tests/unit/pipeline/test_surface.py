"""Coverage and aligned-surface agreement: the same object agrees across its surface, a twin does not."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from app.jobs.listing_transforms import TWIN_KINDS, blur, colour_shift, jpeg_q30, perspective, twin
from app.pipeline.features import extract_features, verify_geometry
from app.pipeline.surface import compare_surface
from app.pipeline.verdict import MIN_COVERAGE, MIN_SURFACE
from tests.unit.pipeline.pictures import reopen, textured


def surface_of(query: Image.Image, ref: Image.Image):
    qf, rf = extract_features(query), extract_features(ref)
    g = verify_geometry(qf, rf)
    assert g.homography is not None, "the test pictures must share a surface"
    return g, compare_surface(query, ref, g.homography, qf.size, rf.size, rf.points)


def test_the_same_surface_under_listing_conditions_agrees_everywhere():
    ref = textured(11)
    for n, transform in enumerate((perspective, colour_shift, blur, jpeg_q30)):
        query = reopen(transform(ref, random.Random(n)))
        g, s = surface_of(query, ref)
        assert g.coverage >= MIN_COVERAGE, (transform.__name__, g.coverage)
        assert s.cells >= 20 and s.agreement >= MIN_SURFACE, (transform.__name__, s.agreement, s.similarity)


def test_a_twin_with_one_region_altered_disagrees_there():
    ref = textured(12)
    donor = textured(13)
    for kind in TWIN_KINDS:
        query = twin(ref, random.Random(5), donor=donor, kind=kind)
        g, s = surface_of(query, ref)
        assert g.inliers >= 12  # the unaltered part still aligns...
        assert s.agreement < MIN_SURFACE, (kind, s.agreement)  # ...but the surfaces differ
        assert s.disagreeing >= 3


def test_keypoints_on_a_corner_of_the_object_cover_little_of_it():
    ref = textured(14)
    # A query sharing only a corner (a logo, a cap) with the reference: the rest is another object.
    query = textured(15).copy()
    query.paste(ref.crop((0, 0, 140, 110)), (0, 0))
    g = verify_geometry(extract_features(query), extract_features(ref))
    if g.inliers:  # the shared corner may align; its keypoints then span a small part of the object
        assert g.coverage < MIN_COVERAGE, g.coverage


def test_a_cropped_query_is_measured_against_what_it_shows():
    ref = textured(16, size=(640, 480))
    query = reopen(ref.crop((100, 60, 500, 400)))
    g, s = surface_of(query, ref)
    assert g.coverage >= 0.6, g.coverage
    assert s.agreement >= MIN_SURFACE
    assert np.isnan(s.similarity).any()  # cells outside the crop are not compared


def _hue_rotated(img: Image.Image, shift: int, box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """The photo with its hues turned by ``shift`` (of 256), in ``box`` only or everywhere."""
    hsv = np.asarray(img.convert("HSV")).copy()
    region = (slice(box[1], box[3]), slice(box[0], box[2])) if box else (slice(None), slice(None))
    hsv[region + (0,)] = (hsv[region + (0,)].astype(int) + shift) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def test_another_colourway_of_the_same_design_differs_but_a_recoloured_photo_does_not():
    ref = textured(17)
    # A flavour's band printed in another colour: the same structure, one region's colours changed.
    colourway = reopen(_hue_rotated(ref, 100, box=(0, 0, 480, 130)))
    _, s = surface_of(colourway, ref)
    assert s.agreement < MIN_SURFACE, s.agreement
    # The whole listing photo recoloured by a filter (hues turned by about 20 degrees): a photo
    # condition, not another object. (A filter that turns every hue much further, and the luminance
    # pattern with it, leaves the pair at `possible`.)
    _, s = surface_of(reopen(_hue_rotated(ref, 15)), ref)
    assert s.agreement >= MIN_SURFACE, s.agreement
