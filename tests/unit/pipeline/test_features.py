"""The building blocks of same-object matching, each alone: local features and geometry, signatures,
region proposals, aggregation and judging."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageDraw

from app.pipeline.calibrate import Calibration, Evidence
from app.jobs.listing_transforms import perspective, textured_background
from app.pipeline.features import LocalFeatures, extract_features, verify_geometry
from app.pipeline.match import Candidate, PhotoEvidence, aggregate_by_artefact, gather_evidence, judge, margins
from app.pipeline.regions import propose_regions, tight_box
from app.pipeline.signature import colour_signature, compute_signature, hamming, perceptual_hash
from tests.conftest import jpeg_bytes, random_photo


def textured(seed: int, size=(480, 360)) -> Image.Image:
    """A photo with plenty of corners, like a painted or engraved surface: many small shapes."""
    img = random_photo(seed, size=size)
    rng = np.random.default_rng(seed + 1000)
    draw = ImageDraw.Draw(img)
    for _ in range(220):
        x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        r = int(rng.integers(3, 14))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + int(rng.integers(0, r)))], fill=colour)
        else:
            draw.line((x, y, x + int(rng.integers(-30, 30)), y + int(rng.integers(-30, 30))), fill=colour, width=2)
    return img


def reopen(img: Image.Image, quality: int = 70) -> Image.Image:
    return Image.open(io.BytesIO(jpeg_bytes(img, quality=quality))).convert("RGB")


# --- local features and geometry ---------------------------------------------------------------

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


# --- signatures ----------------------------------------------------------------------------------

def test_perceptual_hash_finds_a_resized_recompressed_copy():
    photo = textured(5)
    copy = reopen(photo.resize((240, 180)), quality=40)
    other = textured(6)
    assert int(hamming(perceptual_hash(photo), perceptual_hash(copy))) <= 6
    assert int(hamming(perceptual_hash(photo), np.array([perceptual_hash(other)]))[0]) > 12


def test_colour_signature_ignores_a_colour_cast_on_grey_but_not_another_colour():
    grey = Image.fromarray(np.tile(np.linspace(30, 220, 200, dtype=np.uint8), (200, 1))).convert("RGB")
    tinted = Image.fromarray(np.clip(np.asarray(grey, dtype=np.float32) * [1.08, 1.0, 0.94], 0, 255).astype(np.uint8))
    red = Image.new("RGB", (200, 200), (200, 40, 30))
    g, t, r = colour_signature(grey), colour_signature(tinted), colour_signature(red)
    assert float(g @ t) > 0.9
    assert float(g @ r) < 0.2
    assert abs(float(np.linalg.norm(g)) - 1) < 1e-5


def test_signature_has_everything_verification_needs():
    sig = compute_signature(textured(8))
    assert len(sig.features) > 50 and sig.colour.dtype == np.float32
    assert -(2**63) <= sig.phash < 2**63


# --- region proposals ----------------------------------------------------------------------------

def two_objects_on_a_table():
    canvas = Image.new("RGB", (1000, 500), (235, 230, 220))
    canvas.paste(textured(11, size=(300, 300)), (60, 100))
    canvas.paste(textured(12, size=(280, 260)), (620, 140))
    return canvas


def test_proposals_find_each_object_of_a_lot():
    boxes = propose_regions(two_objects_on_a_table())
    centres = [((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2) for b in boxes]
    assert any(abs(cx - 210) < 60 and abs(cy - 250) < 60 for cx, cy in centres), boxes
    assert any(abs(cx - 760) < 60 and abs(cy - 270) < 60 for cx, cy in centres), boxes


def test_tight_box_of_an_object_on_a_plain_backdrop():
    canvas = Image.new("RGB", (800, 600), (20, 20, 20))
    canvas.paste(textured(13, size=(300, 240)), (250, 200))
    box = tight_box(canvas)
    assert box is not None
    assert abs(box.x0 - 250) < 30 and abs(box.y0 - 200) < 30 and abs(box.x1 - 550) < 30 and abs(box.y1 - 440) < 30


# --- aggregation and judging ----------------------------------------------------------------------

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
    photos = {pid: PhotoEvidence(compute_signature(img).colour, extract_features(img))
              for pid, img in ((1, ref_look), (2, ref_same))}
    # The lookalike has the higher embedding cosine; only verification can tell.
    cands = [Candidate(100, 1, 0.86, 0, (1,)), Candidate(200, 2, 0.84, 0, (2,))]
    cal = Calibration("test", {"cosine": 4.0, "margin": 10.0, "log_inliers": 1.5}, -6.0, 0.8, 0.5, 0.6)
    judged = judge(cands, gather_evidence(query, cands, photos, cal, verify=2), cal, [(0, 0, 480, 360)])
    assert judged[0].candidate.artefact_id == 200 and judged[0].evidence.inliers >= 20
    assert judged[0].verdict == "match" and judged[1].verdict == "no_match"
    assert judged[0].box is not None and 0 <= judged[0].score <= 1


def test_proposals_do_not_depend_on_what_was_searched_before():
    photo = two_objects_on_a_table()
    first = propose_regions(photo)
    for seed in range(3):
        propose_regions(textured(seed))
    assert propose_regions(photo) == first
