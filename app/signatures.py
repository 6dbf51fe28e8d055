"""Model-independent signatures of a photo, computed once at registration and stored with it.

- a perceptual hash (finds a registry photo re-used in a listing: resized, recompressed, watermarked);
- a colour signature (local features are colour-blind: two tins with the same print in other
  colours share keypoints);
- local features for geometric verification (``app.local_features``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import imagehash
import numpy as np
from PIL import Image

from app.local_features import LocalFeatures, extract_features

# Bump when any signature changes meaning: stored signatures of an older version are recomputed.
SIGNATURE_VERSION = 1
PHASH_BITS = 64
# Hue x saturation histogram; value (brightness) is left out so lighting matters less.
HUE_BINS, SAT_BINS = 16, 8


@dataclass
class VisualSignature:
    phash: int  # 64-bit perceptual hash as a signed int64 (fits SQLite INTEGER)
    colour: np.ndarray  # (HUE_BINS * SAT_BINS,) float32, unit L2 norm
    features: LocalFeatures

    def colour_bytes(self) -> bytes:
        return self.colour.astype(np.float16).tobytes()


def perceptual_hash(image: Image.Image) -> int:
    bits = imagehash.phash(image, hash_size=8).hash.ravel()
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= (1 << 63) else value


def colour_signature(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB").resize((128, 128), Image.Resampling.BILINEAR))
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [HUE_BINS, SAT_BINS], [0, 180, 0, 256]).ravel()
    hist = np.sqrt(hist / max(float(hist.sum()), 1.0))  # Hellinger: the dot product is the Bhattacharyya coefficient
    return (hist / max(float(np.linalg.norm(hist)), 1e-12)).astype(np.float32)


def colour_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float16).astype(np.float32)


def compute_signature(image: Image.Image) -> VisualSignature:
    return VisualSignature(perceptual_hash(image), colour_signature(image), extract_features(image))


def hamming(a: int, b: np.ndarray | int) -> np.ndarray:
    """Bit distance between one hash and many (int64 arrays)."""
    x = np.bitwise_xor(np.int64(a), np.asarray(b, dtype=np.int64)).view(np.uint64)
    return np.bitwise_count(x)
