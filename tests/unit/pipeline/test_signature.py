"""Photo signatures: perceptual hash, colour, and what verification needs (``app.pipeline.signature``)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from app.pipeline.regions import find_foreground
from app.pipeline.signature import (
    colour_signature,
    compute_signature,
    hamming,
    object_colour_signature,
    perceptual_hash,
)
from tests.unit.pipeline.pictures import reopen, textured


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


def _mug(body: tuple[int, int, int], backdrop: tuple[int, int, int], seed: int = 0) -> Image.Image:
    """A plain mug on a backdrop, shaded a little, with sensor noise."""
    img = Image.new("RGB", (256, 256), backdrop)
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((80, 60, 176, 200), radius=12, fill=body)
    draw.arc((160, 100, 215, 160), 270, 90, fill=body, width=10)
    shade = np.linspace(1.0, 0.92, 256)[None, :, None]
    noise = np.random.default_rng(seed).normal(0, 2.0, (256, 256, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) * shade + noise, 0, 255).astype(np.uint8))


def test_object_colour_tells_a_white_mug_from_a_cream_one_and_ignores_the_backdrop():
    blue, wood = (40, 50, 140), (150, 100, 60)
    white, cream = (236, 236, 234), (236, 226, 196)
    on_blue, cream_on_blue, on_wood = _mug(white, blue), _mug(cream, blue, 1), _mug(white, wood, 2)
    # The whole picture is mostly backdrop, and both mugs are "grey" to the hue histogram.
    assert float(colour_signature(on_blue) @ colour_signature(cream_on_blue)) > 0.95
    assert float(colour_signature(on_blue) @ colour_signature(on_wood)) < 0.6

    def obj(img: Image.Image) -> np.ndarray:
        return object_colour_signature(find_foreground(img))

    assert float(obj(on_blue) @ obj(on_wood)) > 0.9
    assert float(obj(on_blue) @ obj(cream_on_blue)) < 0.5
    assert abs(float(np.linalg.norm(obj(on_blue))) - 1) < 1e-5


def test_object_colour_falls_back_to_the_whole_picture_when_no_object_stands_out():
    flat = Image.new("RGB", (200, 200), (200, 40, 30))
    sig = object_colour_signature(find_foreground(flat))
    assert abs(float(np.linalg.norm(sig)) - 1) < 1e-5 and float(sig.max()) > 0.99
