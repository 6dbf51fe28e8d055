"""Local features and geometric verification: is the candidate the same physical object?

A global embedding says "looks alike"; matching keypoints that agree on one geometric transform
says "same surface". Reference features are extracted once at registration and stored; a query's
features are extracted once per search and compared with the few best candidates only.

SIFT with RootSIFT descriptors, Lowe's ratio test, then RANSAC (MAGSAC++) on a homography.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

# Features are extracted at a bounded size: enough detail for paintings and coins, fast on a CPU.
MAX_SIDE = 640
MIN_SIDE = 256  # small photos (128 px turntable shots) are upscaled so SIFT finds some keypoints
MAX_KEYPOINTS = 600
RATIO = 0.8
RANSAC_REPROJ_PX = 6.0
MIN_MATCHES = 6

_sift = None


def _detector():
    global _sift
    if _sift is None:
        _sift = cv2.SIFT_create(nfeatures=MAX_KEYPOINTS)
    return _sift


@dataclass
class LocalFeatures:
    """Keypoint positions in the original image's pixel frame and RootSIFT descriptors."""

    points: np.ndarray  # (n, 2) float32, original image pixels
    descriptors: np.ndarray  # (n, 128) float32, RootSIFT (unit L2 norm)
    size: tuple[int, int]  # original (width, height)

    def __len__(self) -> int:
        return len(self.points)

    def to_bytes(self) -> bytes:
        """Compact storage: float16 positions, descriptors quantised to uint8."""
        buf = io.BytesIO()
        np.savez(buf, points=self.points.astype(np.float16 if max(self.size) < 60000 else np.float32),
                 desc=np.round(self.descriptors * 255).clip(0, 255).astype(np.uint8),
                 size=np.array(self.size, dtype=np.int32))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LocalFeatures":
        with np.load(io.BytesIO(data)) as z:
            return cls(points=z["points"].astype(np.float32), descriptors=_unit(z["desc"].astype(np.float32)),
                       size=(int(z["size"][0]), int(z["size"][1])))


@dataclass(frozen=True)
class GeometryResult:
    inliers: int  # keypoint matches consistent with one homography
    matches: int  # matches passing the ratio test
    box: tuple[int, int, int, int] | None  # (x0, y0, x1, y1) of the inliers in the query image


NO_GEOMETRY = GeometryResult(0, 0, None)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def extract_features(image: Image.Image) -> LocalFeatures:
    """SIFT keypoints on a grey, size-bounded copy; positions mapped back to the original frame."""
    w, h = image.size
    scale = min(MAX_SIDE / max(w, h), 1.0)
    if max(w, h) * scale < MIN_SIDE:
        scale = MIN_SIDE / max(w, h)
    grey = image.convert("L")
    if scale != 1.0:
        grey = grey.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    keypoints, desc = _detector().detectAndCompute(np.asarray(grey), None)
    if desc is None or not keypoints:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), (w, h))
    points = np.array([k.pt for k in keypoints], dtype=np.float32) / scale
    root = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-12))  # RootSIFT
    return LocalFeatures(points, _unit(root).astype(np.float32), (w, h))


def _ratio_matches(query: LocalFeatures, ref: LocalFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Indices of mutual-nearest matches passing Lowe's ratio test."""
    sims = query.descriptors @ ref.descriptors.T  # unit vectors: d^2 = 2 - 2 sim
    order = np.argsort(-sims, axis=1)[:, :2]
    rows = np.arange(len(query))
    best, second = sims[rows, order[:, 0]], sims[rows, order[:, 1]]
    d1 = np.sqrt(np.maximum(2 - 2 * best, 0))
    d2 = np.sqrt(np.maximum(2 - 2 * second, 0))
    keep = d1 < RATIO * d2
    # Mutual check: the reference keypoint's own best query keypoint is this one.
    back = np.argmax(sims, axis=0)
    keep &= back[order[:, 0]] == rows
    q_idx = rows[keep]
    return q_idx, order[keep, 0]


def verify_geometry(query: LocalFeatures, ref: LocalFeatures) -> GeometryResult:
    """Count keypoint matches that one homography explains (RANSAC)."""
    if len(query) < MIN_MATCHES or len(ref) < MIN_MATCHES:
        return NO_GEOMETRY
    q_idx, r_idx = _ratio_matches(query, ref)
    n = len(q_idx)
    if n < MIN_MATCHES:
        return GeometryResult(0, n, None)
    src = ref.points[r_idx].reshape(-1, 1, 2)
    dst = query.points[q_idx].reshape(-1, 1, 2)
    # Reprojection tolerance in query pixels, relative to the query's size.
    tol = RANSAC_REPROJ_PX * max(query.size) / MAX_SIDE if max(query.size) > MAX_SIDE else RANSAC_REPROJ_PX
    try:
        H, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, tol, maxIters=2000, confidence=0.999)
    except cv2.error:
        return GeometryResult(0, n, None)
    if H is None or mask is None or not _plausible(H):
        return GeometryResult(0, n, None)
    inl = mask.ravel().astype(bool)
    count = int(inl.sum())
    if count < MIN_MATCHES:
        return GeometryResult(0, n, None)
    pts = query.points[q_idx[inl]]
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return GeometryResult(count, n, (int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))))


def _plausible(H: np.ndarray) -> bool:
    """Reject degenerate homographies (mirroring, collapse, extreme perspective)."""
    det = float(np.linalg.det(H[:2, :2]))
    if not (1e-3 < abs(det) < 1e3) or det < 0:
        return False
    return float(np.abs(H[2, :2]).max()) < 0.01
