"""Pictures the pipeline tests share: textured surfaces (many corners, like a painted or engraved
object) and a JPEG round trip."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

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
