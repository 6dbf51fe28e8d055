"""Where the objects are in a photo: boxes to embed besides the whole frame.

A listing photo may show a lot of several objects, or one object on a cluttered table or a wall. A
single descriptor of the whole frame mixes them; descriptors of object regions do not. Classical
and fast (no weights to download): pixels that differ from the photo's border colours are
foreground; its connected parts are object proposals, their union is the object's tight box.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

WORK_SIDE = 192  # proposals are computed on a small copy
MIN_PART = 0.03  # a part smaller than this share of the frame is not an object
MAX_PROPOSALS = 4
PAD = 0.04  # boxes are padded so the object's outline stays inside


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    def iou(self, other: "Box") -> float:
        ix = max(0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union else 0.0


def full_frame(image: Image.Image) -> Box:
    return Box(0, 0, image.width, image.height)


@dataclass(frozen=True)
class Foreground:
    """Where the object is, found once per photo: the region proposals and the object's colours
    (``signature.object_colour_signature``) both read it."""

    mask: np.ndarray  # (h, w) uint8, 255 on the object, on the small copy
    scale: float  # small copy / original
    small: np.ndarray  # (h, w, 3) uint8 RGB: the small copy itself


def find_foreground(image: Image.Image) -> Foreground:
    """Foreground on a small copy. Background = colours seen on the border."""
    w, h = image.size
    scale = WORK_SIDE / max(w, h)
    small_image = image.convert("RGB").resize((max(8, round(w * scale)), max(8, round(h * scale))),
                                              Image.Resampling.BILINEAR)
    small = np.asarray(small_image)
    lab: np.ndarray = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab = cv2.GaussianBlur(lab, (5, 5), 0)
    border = np.concatenate([lab[:3].reshape(-1, 3), lab[-3:].reshape(-1, 3),
                             lab[:, :3].reshape(-1, 3), lab[:, -3:].reshape(-1, 3)])
    # A few border colour clusters: walls, tables and studio backdrops are rarely one colour.
    k = 4
    # k-means++ draws from OpenCV's per-thread random generator: seed it, so the same photo always
    # gets the same proposals whatever was searched before it.
    cv2.setRNGSeed(0x5EED)
    _, _, centres = cv2.kmeans(border, k, None, (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 10, 1.0),
                               2, cv2.KMEANS_PP_CENTERS)
    dist = np.min(np.linalg.norm(lab[:, :, None, :] - centres[None, None], axis=3), axis=2)
    # Edges count too: an object with the backdrop's colour still has an outline and texture.
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    grad = cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(np.float32)
    score = dist / max(float(np.percentile(dist, 99)), 1.0) + 0.5 * grad / max(float(np.percentile(grad, 99)), 1.0)
    score8 = np.clip(score * 127, 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(score8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return Foreground(mask, scale, small)


def propose_regions(image: Image.Image, foreground: Foreground | None = None) -> list[Box]:
    """The tight box around all foreground, then the largest separate parts (several objects)."""
    frame = full_frame(image)
    fg = foreground if foreground is not None else find_foreground(image)
    mask, scale = fg.mask, fg.scale
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    total = mask.shape[0] * mask.shape[1]
    parts = [stats[i] for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= MIN_PART * total]
    if not parts:
        return []
    parts.sort(key=lambda s: -int(s[cv2.CC_STAT_WIDTH]) * int(s[cv2.CC_STAT_HEIGHT]))

    def to_box(x, y, bw, bh) -> Box:
        px, py = PAD * bw, PAD * bh
        return Box(max(0, int((x - px) / scale)), max(0, int((y - py) / scale)),
                   min(frame.x1, int(np.ceil((x + bw + px) / scale))),
                   min(frame.y1, int(np.ceil((y + bh + py) / scale))))

    boxes: list[Box] = []
    xs = [(s[0], s[1], s[0] + s[2], s[1] + s[3]) for s in parts]
    x0, y0 = min(b[0] for b in xs), min(b[1] for b in xs)
    x1, y1 = max(b[2] for b in xs), max(b[3] for b in xs)
    boxes.append(to_box(x0, y0, x1 - x0, y1 - y0))
    if len(parts) > 1:
        for s in parts[:MAX_PROPOSALS]:
            boxes.append(to_box(int(s[0]), int(s[1]), int(s[2]), int(s[3])))
    return _distinct(boxes, frame)


def tight_box(image: Image.Image) -> Box | None:
    """The object's box for a registry photo, or None when it fills the frame anyway."""
    return object_box(image, propose_regions(image))


def object_box(image: Image.Image, proposals: list[Box]) -> Box | None:
    """The object's box among a photo's proposals (the first), or None when it fills the frame anyway."""
    if not proposals:
        return None
    box = proposals[0]
    return box if box.area < 0.85 * full_frame(image).area else None


def _distinct(boxes: list[Box], frame: Box) -> list[Box]:
    """Drop boxes that are nearly the whole frame, tiny, or repeats of a kept one."""
    kept: list[Box] = []
    for b in boxes:
        if b.area < MIN_PART * frame.area or b.iou(frame) > 0.85:
            continue
        if any(b.iou(k) > 0.7 for k in kept):
            continue
        kept.append(b)
    return kept


def crop(image: Image.Image, box: Box) -> Image.Image:
    return image.crop(box.as_tuple())
