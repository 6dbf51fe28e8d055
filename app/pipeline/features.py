"""Local features and geometric verification: is the candidate the same physical object?

A global embedding says "looks alike"; matching keypoints that agree on one geometric transform
says "same surface". Reference features are extracted once at registration and stored; a query's
features are extracted once per search and compared with the few best candidates only.

SIFT with RootSIFT descriptors, Lowe's ratio test, then RANSAC (MAGSAC++) on a homography.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
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
# Fewer inliers than this happen between unrelated photos by chance (repeated patterns, frames).
MIN_INLIERS = 8

_local = threading.local()
_blas = None


@contextmanager
def single_threaded_blas():
    """A context in which BLAS uses one thread.

    The products here are small (600 x 600 x 128): on a busy 2-core machine a multi-threaded BLAS
    spends far longer waking and spinning its threads (30 ms measured) than computing (1 ms).
    Nested uses are free: setting the limit itself costs a fraction of a millisecond, so a search
    sets it once around all its candidates.
    """
    global _blas
    if getattr(_local, "blas_limited", False):
        yield
        return
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        _local.blas_limited = True
        try:
            yield
        finally:
            _local.blas_limited = False


def _detector():
    """One SIFT detector per thread: the API serves searches from a thread pool."""
    if not hasattr(_local, "sift"):
        _local.sift = cv2.SIFT.create(nfeatures=MAX_KEYPOINTS)
    return _local.sift


@dataclass
class LocalFeatures:
    """Keypoint positions in the original image's pixel frame and RootSIFT descriptors."""

    points: np.ndarray  # (n, 2) float32, original image pixels
    descriptors: np.ndarray  # (n, 128) float32, RootSIFT (unit L2 norm)
    size: tuple[int, int]  # original (width, height)

    def __len__(self) -> int:
        return len(self.points)

    def to_bytes(self) -> bytes:
        """Compact storage: a small header, float32 positions, descriptors quantised to uint8.

        Plain arrays rather than an archive format: a search reads the features of 30 or so
        registry photos, and ``np.frombuffer`` costs microseconds where unzipping costs milliseconds.
        """
        header = np.array([len(self.points), self.size[0], self.size[1]], dtype="<u4").tobytes()
        points = np.ascontiguousarray(self.points, dtype="<f4").tobytes()
        desc = np.round(self.descriptors * 255).clip(0, 255).astype(np.uint8).tobytes()
        return header + points + desc

    @classmethod
    def from_bytes(cls, data: bytes) -> "LocalFeatures":
        n, w, h = (int(v) for v in np.frombuffer(data, dtype="<u4", count=3))
        points = np.frombuffer(data, dtype="<f4", count=2 * n, offset=12).reshape(n, 2)
        desc = np.frombuffer(data, dtype=np.uint8, count=128 * n, offset=12 + 8 * n).reshape(n, 128)
        return cls(points=points.astype(np.float32), descriptors=_unit(desc.astype(np.float32)), size=(w, h))


@dataclass(frozen=True)
class GeometryResult:
    inliers: int  # keypoint matches consistent with one homography
    matches: int  # matches passing the ratio test
    box: tuple[int, int, int, int] | None  # (x0, y0, x1, y1) of the inliers in the query image
    # Share of the object's visible extent that the inliers span: the area of the inliers' hull over
    # that of the reference keypoints the homography puts inside the query frame. Agreement on a
    # logo, a cap or a rim spans a corner of the object; the same object agrees across it.
    coverage: float = 0.0
    homography: np.ndarray | None = None  # reference keypoint frame -> query keypoint frame


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
    rows = np.arange(len(query))
    first = np.argmax(sims, axis=1)
    # Mutual check: the reference keypoint's own best query keypoint is this one.
    back = np.argmax(sims, axis=0)
    best = sims[rows, first]
    sims[rows, first] = -2.0  # in place (the product is ours): the row maximum is now the second best
    second = sims.max(axis=1)
    d1 = np.sqrt(np.maximum(2 - 2 * best, 0))
    d2 = np.sqrt(np.maximum(2 - 2 * second, 0))
    keep = d1 < RATIO * d2
    keep &= back[first] == rows
    return rows[keep], first[keep]


def verify_geometry(query: LocalFeatures, ref: LocalFeatures) -> GeometryResult:
    """Count keypoint matches that one homography explains (RANSAC)."""
    if len(query) < MIN_MATCHES or len(ref) < MIN_MATCHES:
        return NO_GEOMETRY
    with single_threaded_blas():
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
    if count < MIN_INLIERS:
        return GeometryResult(0, n, None)
    pts = query.points[q_idx[inl]]
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return GeometryResult(count, n, (int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))),
                          coverage(H, ref, ref.points[r_idx[inl]], query.size), H)


def _hull_area(points: np.ndarray) -> float:
    if len(points) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(np.asarray(points, np.float32))))


def coverage(H: np.ndarray, ref: LocalFeatures, inlier_points: np.ndarray, query_size: tuple[int, int]) -> float:
    """Share of the reference object's part visible in the query that the inliers span (0 to 1).

    The object's extent is the hull of the reference's keypoints (they fall on the object, seldom on
    a plain background); only those the homography maps inside the query frame count, so a query
    that crops the object is measured against what it shows.
    """
    projected = cv2.perspectiveTransform(ref.points.reshape(-1, 1, 2).astype(np.float64), H).reshape(-1, 2)
    w, h = query_size
    inside = (projected[:, 0] >= 0) & (projected[:, 0] < w) & (projected[:, 1] >= 0) & (projected[:, 1] < h)
    visible = _hull_area(ref.points[inside])
    if visible <= 0:
        return 0.0
    return float(min(1.0, _hull_area(inlier_points) / visible))


def _plausible(H: np.ndarray) -> bool:
    """Reject degenerate homographies (mirroring, collapse, extreme perspective)."""
    det = float(np.linalg.det(H[:2, :2]))
    if not (1e-3 < abs(det) < 1e3) or det < 0:
        return False
    return float(np.abs(H[2, :2]).max()) < 0.01
