"""Aligned-surface agreement: once the keypoints have aligned two photos, does the whole visible
surface of the object agree, or only part of it?

Keypoints that agree on one transform prove that two photos share a surface; they do not prove
that the surfaces are the same everywhere. A near twin (another flavour of one brand's packet,
another die of one coin type, a repainted patch, a swapped label) shares most of its keypoints with
the registered object and differs in one region. So the query is warped onto the reference photo
with the verified homography and compared cell by cell over the object's extent; a cell that
clearly differs is a region the two photos do not share.

The comparison is made on small, blurred, contrast-normalised grey copies, so that what a listing
does to a photo of the same object (recompression, blur, a colour cast, another exposure) does not
read as a difference, while a region with other content does.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

# The long side of the reference at which surfaces are compared: large enough for a label's or an
# inscription's layout, small enough that alignment errors of a few query pixels vanish.
SURFACE_SIDE = 128
GRID = 10  # cells per side over the object's extent
BLUR_SIGMA = 1.2  # in SURFACE_SIDE pixels
MIN_VALID = 0.6  # share of a cell that must be seen in the query and lie on the object
# A cell agrees when the structural similarity of the two normalised patches reaches this. Measured
# (docs/BENCHMARKS.md, with the colour check below): the surface agreement of a registry photo and
# its listing copies (crop, rotation, perspective, colour, blur, JPEG q30, watermark...) is at least
# 0.937 on the demo coins and 0.89 on coil100 objects; of a photo and its generated twins at most
# 0.811 and 0.841; of museum photos of the same painting under 0.85 for 3 of 52 (glare on the glass,
# the frame's depth).
CELL_AGREES = 0.35
# A patch whose spread is under this (in units of the object's own spread) is plain; two plain
# patches are not compared. C2 keeps the ratio stable for nearly plain ones.
FLAT = 0.12
C2 = 0.01
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# Colour, in CIELAB a*b* units: a cell is coloured from MIN_CHROMA, and its colour differs beyond
# COLOUR_DIFFERS (a green against an orange is about 100; white balance left after the per-channel
# correction, 5 to 10). Colour differences count only in at most LOCAL_COLOUR_SHARE of the object's
# coloured cells: beyond that, the photo was recoloured as a whole.
MIN_CHROMA = 12.0
COLOUR_DIFFERS = 30.0
LOCAL_COLOUR_SHARE = 0.5


@dataclass(frozen=True)
class SurfaceResult:
    agreement: float  # share of the compared cells that agree (0 when none could be compared)
    cells: int  # cells compared: on the object and visible in the query
    similarity: np.ndarray  # (GRID, GRID) cell similarities, NaN where not compared

    @property
    def disagreeing(self) -> int:
        return int(np.sum(self.similarity[~np.isnan(self.similarity)] < CELL_AGREES))


NO_SURFACE = SurfaceResult(0.0, 0, np.full((GRID, GRID), np.nan))


def _grey(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    grey = np.asarray(image.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    return cv2.GaussianBlur(grey, (0, 0), BLUR_SIGMA)


def reference_frame(ref_size: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """Scale from the reference's keypoint frame to the comparison frame, and that frame's size."""
    w, h = ref_size
    r = SURFACE_SIDE / max(w, h)
    return r, (max(1, round(w * r)), max(1, round(h * r)))


class QueryPyramid:
    """The query photo (RGB) at halving sizes, made once per search: each comparison warps from the
    level nearest its scale, so a 12 MP query is never resampled whole for a 128-pixel cell grid."""

    def __init__(self, image: Image.Image, size: tuple[int, int] | None = None):
        # ``size``: the frame of the query's keypoints, when the image is not at that size.
        self.frame = size or image.size
        level: np.ndarray = np.asarray(image.convert("RGB"), dtype=np.uint8)
        self.levels = [(image.width / max(self.frame[0], 1), level)]
        while min(level.shape[:2]) > 64:
            level = cv2.pyrDown(level)
            self.levels.append((level.shape[1] / max(self.frame[0], 1), level))

    def pick(self, wanted: float) -> tuple[float, np.ndarray]:
        """The smallest level still at least ``wanted`` pixels per query keypoint-frame pixel."""
        for scale, level in reversed(self.levels):
            if scale >= wanted:
                return scale, level
        return self.levels[0]


def _warp(pyramid: QueryPyramid, homography: np.ndarray, ref_size: tuple[int, int]
          ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The query warped into the reference's comparison frame (RGB uint8), the mask of pixels it
    covers, and the frame's size. ``homography`` maps reference keypoint coordinates (frame
    ``ref_size``) to query keypoint coordinates (the pyramid's frame)."""
    r, (tw, th) = reference_frame(ref_size)
    local_scale = float(np.sqrt(max(abs(np.linalg.det(homography[:2, :2])), 1e-12)))  # query per reference px
    # Enough query pixels per comparison pixel (1.5) that the inverse map does not alias.
    scale, level = pyramid.pick(min(1.0, 1.5 * r / local_scale))
    m = np.diag([scale, scale, 1.0]) @ homography @ np.diag([1.0 / r, 1.0 / r, 1.0])
    warped = cv2.warpPerspective(level, m, (tw, th), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ones = np.full(level.shape[:2], 255, np.uint8)
    seen = cv2.warpPerspective(ones, m, (tw, th), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped, cv2.erode(seen, np.ones((3, 3), np.uint8)) > 0, (tw, th)


def object_mask(points: np.ndarray, ref_size: tuple[int, int]) -> np.ndarray:
    """The object's extent in the comparison frame: the hull of the reference's keypoints.

    Keypoints fall on the object's texture and edges, rarely on a plain background, so their hull
    is the object without a segmentation model; with fewer than three keypoints, the whole frame.
    """
    r, (tw, th) = reference_frame(ref_size)
    mask = np.zeros((th, tw), np.uint8)
    if len(points) < 3:
        mask[:] = 1
        return mask.astype(bool)
    hull = cv2.convexHull((np.asarray(points, np.float32) * r).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def compare_surface(query: Image.Image | QueryPyramid, reference: Image.Image, homography: np.ndarray,
                    query_size: tuple[int, int], ref_size: tuple[int, int], ref_points: np.ndarray) -> SurfaceResult:
    """Cell-by-cell agreement of the aligned query and the reference over the object's visible extent.

    ``reference`` may be at any size (it is brought to the comparison frame of ``ref_size``).
    """
    pyramid = query if isinstance(query, QueryPyramid) else QueryPyramid(query, query_size)
    warped, seen, size = _warp(pyramid, homography, ref_size)
    ref_rgb = cv2.GaussianBlur(np.asarray(reference.convert("RGB").resize(size, Image.Resampling.BILINEAR),
                                          dtype=np.float32), (0, 0), BLUR_SIGMA)
    qry_rgb = cv2.GaussianBlur(warped.astype(np.float32), (0, 0), BLUR_SIGMA)
    ref = ref_rgb @ GREY_WEIGHTS
    qry = qry_rgb @ GREY_WEIGHTS
    on_object = object_mask(ref_points, ref_size)
    valid = seen & on_object
    if valid.sum() < 64:
        return NO_SURFACE
    # Normalise each photo over the compared pixels, so that "plain" and "textured" mean the same
    # in both whatever their exposure and contrast.
    v = valid.astype(np.float64)
    rn = np.where(valid, (ref - ref[valid].mean()) / (ref[valid].std() + 1.0), 0.0)
    qn = np.where(valid, (qry - qry[valid].mean()) / (qry[valid].std() + 1.0), 0.0)
    ra, rb, qa, qb = _chroma(ref_rgb, qry_rgb, valid)
    # Per-cell sums from integral images: a few lookups per cell instead of a pass over its pixels.
    sums = [cv2.integral(x.astype(np.float64)) for x in (v, rn, qn, rn * rn, qn * qn, rn * qn, ra, rb, qa, qb)]
    xe, ye = _cell_edges(on_object)
    y0, y1 = ye[:-1, None], ye[1:, None]
    x0, x1 = xe[None, :-1], xe[None, 1:]
    n, sa, sb, saa, sbb, sab, sra, srb, sqa, sqb = (s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0] for s in sums)
    area = np.maximum((y1 - y0) * (x1 - x0), 1)
    # A cell's similarity is SSIM's contrast and structure terms without its brightness term: glare
    # on a painting's glass, shade or exposure shift a patch's brightness and flatten its contrast a
    # little; other content (a label, an inscription, a repainted patch) has another structure.
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = sa / n, sb / n
        va = np.maximum(saa / n - ma * ma, 0)
        vb = np.maximum(sbb / n - mb * mb, 0)
        cov = sab / n - ma * mb
        sim = (2 * cov + C2) / (va + vb + C2)
        ref_chroma = np.stack([sra / n, srb / n])
        qry_chroma = np.stack([sqa / n, sqb / n])
    seen_enough = n / area >= MIN_VALID
    # Colour: another colourway of one design (a flavour's green band printed orange) has the same
    # structure everywhere. A cell whose mean colour differs is evidence only while such cells are a
    # minority of the object's coloured cells: a whole photo recoloured (a listing's filter) differs
    # everywhere, and is left to the structure alone.
    coloured = seen_enough & (np.maximum(np.hypot(*ref_chroma), np.hypot(*qry_chroma)) >= MIN_CHROMA)
    other_colour = coloured & (np.hypot(*(ref_chroma - qry_chroma)) > COLOUR_DIFFERS)
    if coloured.sum() and other_colour.sum() > LOCAL_COLOUR_SHARE * coloured.sum():
        other_colour[:] = False
    # Not compared: cells mostly unseen or off the object, and cells plain in both photos (unless
    # their colours differ).
    textured = np.maximum(va, vb) >= FLAT * FLAT
    sim = np.where(other_colour, np.minimum(sim, -1.0), sim)
    sim = np.where(seen_enough & (textured | other_colour), sim, np.nan)
    compared = sim[~np.isnan(sim)]
    if not len(compared):
        return NO_SURFACE
    return SurfaceResult(float(np.mean(compared >= CELL_AGREES)), int(len(compared)), sim)


def _cell_edges(on_object: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column and row edges of the GRID x GRID cells over the object's bounding box."""
    ys, xs = np.nonzero(on_object)
    return (np.linspace(xs.min(), xs.max() + 1, GRID + 1).round().astype(int),
            np.linspace(ys.min(), ys.max() + 1, GRID + 1).round().astype(int))


def _chroma(ref_rgb: np.ndarray, qry_rgb: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, ...]:
    """The a* and b* (CIELAB) planes of both photos, the query's first brought to the reference's
    white balance and exposure (per-channel gain and offset over the object), colourfulness and
    overall hue."""
    q = qry_rgb.copy()
    for c in range(3):
        r_c, q_c = ref_rgb[..., c][valid], qry_rgb[..., c][valid]
        q[..., c] = (qry_rgb[..., c] - q_c.mean()) * (r_c.std() + 1.0) / (q_c.std() + 1.0) + r_c.mean()
    ref_lab = cv2.cvtColor(np.clip(ref_rgb / 255.0, 0, 1).astype(np.float32), cv2.COLOR_RGB2Lab)
    qry_lab = cv2.cvtColor(np.clip(q / 255.0, 0, 1).astype(np.float32), cv2.COLOR_RGB2Lab)
    ref_ab = ref_lab[..., 1] + 1j * ref_lab[..., 2]
    qry_ab = qry_lab[..., 1] + 1j * qry_lab[..., 2]
    # A hue filter turns every colour by about one angle: turn the query's colours back by the
    # angle that best aligns them with the reference's, weighted by how colourful each pixel is.
    turn = np.angle(np.sum(ref_ab[valid] * np.conj(qry_ab[valid])))
    gain = float(np.clip((np.median(np.abs(ref_ab[valid])) + 1.0) / (np.median(np.abs(qry_ab[valid])) + 1.0),
                         0.5, 2.0))
    qry_ab = qry_ab * gain * np.exp(1j * turn)
    return tuple(np.where(valid, x, 0.0) for x in (ref_ab.real, ref_ab.imag, qry_ab.real, qry_ab.imag))


def aligned_view(query: Image.Image, reference: Image.Image, homography: np.ndarray, query_size: tuple[int, int],
                 ref_size: tuple[int, int], ref_points: np.ndarray, side: int = 256) -> Image.Image:
    """The reference beside the query warped onto it, cells that disagree outlined in red: what an
    officer or an analyst looks at to see why a pair was or was not called the same object."""
    from PIL import ImageDraw

    pyramid = QueryPyramid(query, query_size)
    result = compare_surface(pyramid, reference, homography, query_size, ref_size, ref_points)
    warped, seen, size = _warp(pyramid, homography, ref_size)
    ref = np.asarray(reference.convert("RGB").resize(size, Image.Resampling.BILINEAR))
    panel = Image.new("RGB", (size[0] * 2 + 4, size[1]), (255, 255, 255))
    panel.paste(Image.fromarray(ref), (0, 0))
    panel.paste(Image.fromarray(np.where(seen[..., None], warped, 40).astype(np.uint8)), (size[0] + 4, 0))
    draw = ImageDraw.Draw(panel)
    on_object = object_mask(ref_points, ref_size)
    if on_object.any():
        xe, ye = _cell_edges(on_object)
        for i, j in zip(*np.nonzero(result.similarity < CELL_AGREES)):  # NaN (not compared) is never below
            for dx in (0, size[0] + 4):
                draw.rectangle((xe[j] + dx, ye[i], xe[j + 1] - 1 + dx, ye[i + 1] - 1), outline=(230, 0, 0))
    scale = side / max(size)
    return panel.resize((max(1, round(panel.width * scale)), max(1, round(panel.height * scale))),
                        Image.Resampling.NEAREST)
