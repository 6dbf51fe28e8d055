"""Photo signatures: perceptual hash, colour, and what verification needs (``app.pipeline.signature``)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.pipeline.signature import colour_signature, compute_signature, hamming, perceptual_hash
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
