"""Model-independent signatures of a photo, computed once at registration and stored with it.

- a perceptual hash (finds a registry photo re-used in a listing: resized, recompressed, watermarked);
- a colour signature (local features are colour-blind: two tins with the same print in other
  colours share keypoints);
- local features for geometric verification (``app.pipeline.features``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import imagehash
import numpy as np
from PIL import Image

from app.pipeline.features import LocalFeatures, extract_features
from app.pipeline.regions import Box, propose_regions

PHASH_BITS = 64
# Hue x saturation histogram of the coloured pixels; value (brightness) is left out so lighting
# matters less. Grey, white and black pixels have no reliable hue (a slight colour cast turns a grey
# coin any hue), so they are binned by brightness alone. Measured on coil100-views (AUC of the first
# answer's colour similarity, registered vs unregistered objects): 0.984, against 0.987 for a plain
# hue x saturation histogram that scores a tinted grey coin 0 against its own photo.
HUE_BINS, SAT_BINS, GREY_BINS = 16, 3, 4
MIN_SATURATION, MIN_VALUE = 48, 40


@dataclass
class VisualSignature:
    phash: int  # 64-bit perceptual hash as a signed int64 (fits SQLite INTEGER)
    colour: np.ndarray  # (HUE_BINS * SAT_BINS + GREY_BINS,) float32, unit L2 norm
    features: LocalFeatures | None = None  # None until extracted: a re-used registry photo needs none

    def colour_bytes(self) -> bytes:
        return self.colour.astype(np.float16).tobytes()

    def features_bytes(self) -> bytes:
        if self.features is None:
            raise ValueError("this signature has no local features to store")
        return self.features.to_bytes()


def perceptual_hash(image: Image.Image) -> int:
    bits = imagehash.phash(image, hash_size=8).hash.ravel()
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= (1 << 63) else value


def colour_signature(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB").resize((128, 128), Image.Resampling.BILINEAR))
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.int32)
    chromatic = (hsv[:, 1] >= MIN_SATURATION) & (hsv[:, 2] >= MIN_VALUE)
    hue = hsv[chromatic, 0] * HUE_BINS // 180
    sat = (hsv[chromatic, 1] - MIN_SATURATION) * SAT_BINS // (256 - MIN_SATURATION)
    coloured = np.bincount(hue * SAT_BINS + sat, minlength=HUE_BINS * SAT_BINS)
    grey = np.bincount(hsv[~chromatic, 2] * GREY_BINS // 256, minlength=GREY_BINS)
    hist = np.concatenate([coloured, grey]).astype(np.float64)
    hist = np.sqrt(hist / max(float(hist.sum()), 1.0))  # Hellinger: the dot product is the Bhattacharyya coefficient
    return (hist / max(float(np.linalg.norm(hist)), 1e-12)).astype(np.float32)


def colour_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float16).astype(np.float32)


def compute_signature(image: Image.Image, features: bool = True) -> VisualSignature:
    return VisualSignature(perceptual_hash(image), colour_signature(image),
                           extract_features(image) if features else None)


def hamming(a: int, b: np.ndarray | int) -> np.ndarray:
    """Bit distance between one hash and many (int64 arrays)."""
    x = np.bitwise_xor(np.int64(a), np.asarray(b, dtype=np.int64)).view(np.uint64)
    return np.bitwise_count(x)


@dataclass
class PhotoAnalysis:
    """What a search needs of a query photo besides its embedding. It does not depend on the model,
    so a scan's decode workers compute it in parallel with the embedding of earlier photos."""

    signature: VisualSignature  # with its local features
    proposals: list[Box] | None  # object regions besides the whole frame; None when not wanted


def analyse_photo(image: Image.Image, proposals: bool) -> PhotoAnalysis:
    return PhotoAnalysis(compute_signature(image), propose_regions(image) if proposals else None)
