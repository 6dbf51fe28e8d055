"""Decoding uploaded bytes into an RGB picture the encoders can use.

Phone photos are 12 MP and more while the models look at a few hundred pixels, so JPEGs are
decoded with ``Image.draft`` at a reduced scale (DCT scaling: about 22 ms instead of 150 ms or more
for a 12 MP photo on 2 cores) while staying at least ``min_side`` pixels on their short side.

Every image the service reads (uploads, registry photos, scanned listings) is decoded here, within
bounds (``decode_limits``): the first frame only (a multi-page TIFF or an animated GIF is never walked:
counting 40,000 pages took 10 s), the pixel limit from the header before any pixel is decoded, at most
``HM_LARGE_DECODES`` large decodes at once, each reduced to the size the caller needs strip by strip
and its memory given back.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from app.core.errors import BadImage, ImageTooLarge, ServerBusy
from app.core.files import sha256_hex
from app.pipeline.decode_limits import LARGE_DECODES, DecodeLimits, check_pixels, default_limits, release_memory

if TYPE_CHECKING:
    from app.pipeline.signature import PhotoAnalysis

try:  # HEIC/HEIF: the format of most iPhone photos
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - declared dependency, but the service still runs without
    pillow_heif = None  # type: ignore[assignment]  # the module, or None without it

ACCEPTED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "TIFF", "HEIF", "AVIF", "BMP", "GIF"}
ACCEPTED_HUMAN = "JPEG, PNG, WebP, TIFF, HEIC/HEIF, BMP or GIF"
# A large picture is converted and reduced in strips of about this many pixels, so the only full-size
# buffer is the decoded picture itself.
STRIP_PIXELS = 2_000_000

# A search decodes a JPEG once, to the smallest DCT scale that keeps the short side at least 1.5x the
# model's input, and every step works on that picture: the model's input, the hash, the colour and
# the keypoints (at most ``features.MAX_SIDE``). A 12 MP photo decodes to 504x378 instead of
# 1008x756 at 2x, which saves 14 ms of a 130 ms query in resizes and keypoints. Photos under 672 px
# on the short side, and the museum pack's 1280x960, decode as before; 1024x768 now decodes to half.
# Measured with efficientnet-lite0 (docs/BENCHMARKS.md): cosine to the full decode at least 0.9976
# on ten 12 MP photos (0.9990 at 2x); museum-paintings at 12 MP kept its recall and match recall.
DECODE_MARGIN = 1.5


def working_side(model_input: int) -> int:
    """The short side a search decodes JPEGs to, at least, for a model of this input size."""
    return round(DECODE_MARGIN * model_input)


DEFAULT_MIN_SIDE = working_side(224)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    sha256: str
    format: str
    width: int  # of the original, after orientation
    height: int
    # The model-independent part of a search, when a decode worker already computed it: scans do it
    # beside decoding, off the process that embeds.
    analysis: PhotoAnalysis | None = None
    # Salt-and-pepper noise was found and cleaned (``remove_impulse_noise``): ``image`` is the cleaned one.
    denoised: bool = False
    # The photo's bytes, carried only where they are to be kept (a scan with HM_ARCHIVE_KEEP_FULL).
    original: bytes | None = None


def decode_image(
    data: bytes,
    *,
    max_pixels: int | None = None,
    min_side: int | None = DEFAULT_MIN_SIDE,
    limits: DecodeLimits | None = None,
) -> DecodedImage:
    """Open, check and decode the first frame of image bytes; ``min_side=None`` decodes at full resolution.

    ``limits`` defaults to the process's settings; ``max_pixels``, when given, replaces its pixel limit.
    Raises ``BadImage`` (422), ``ImageTooLarge`` (413) or, when the large decodes already running kept
    this one waiting too long, ``ServerBusy`` (503).
    """
    if not data:
        raise BadImage("The file is empty.")
    limits = limits or default_limits()
    if max_pixels is not None:
        limits = replace(limits, max_pixels=max_pixels)
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        fmt = (img.format or "").upper()
        if fmt not in ACCEPTED_FORMATS:
            raise BadImage(f"Unsupported image format {fmt or 'unknown'}; send {ACCEPTED_HUMAN}.")
        # Opening read the header only, of the first frame only; nothing below asks for the number of
        # frames or seeks, so Pillow never walks the pages of a TIFF or the frames of a GIF.
        width, height = img.size
        if width <= 0 or height <= 0:
            raise BadImage("The image has no pixels.")
        check_pixels(width, height, limits.max_pixels)
        if min_side and fmt in ("JPEG", "MPO"):
            short = min(width, height)
            if short > 2 * min_side:
                scale = min_side / short
                img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
        if img.width * img.height > limits.large_pixels:  # as decoded: after the DCT scaling
            img, orientation = _decode_large(img, min_side, limits)
        else:
            img, orientation = _decode(img, min_side, reduce=False)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        if orientation and orientation != 1:
            img = _apply_orientation(img, orientation)
        # Impulses would become keypoints and high-frequency energy in the embeddings: clean them
        # before anything reads the picture.
        img, denoised = remove_impulse_noise(img)
    except (BadImage, ImageTooLarge, ServerBusy):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"The image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage(f"The file is not an image we can read; send {ACCEPTED_HUMAN}.") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise BadImage(f"The image is damaged or truncated and cannot be decoded ({exc}).") from exc
    except MemoryError as exc:
        raise ImageTooLarge("The image needs too much memory to decode.") from exc
    return DecodedImage(image=img, sha256=sha256_hex(data), format=fmt, width=width, height=height,
                        denoised=denoised)


def _decode_large(img: Image.Image, min_side: int | None, limits: DecodeLimits) -> tuple[Image.Image, int]:
    """``_decode`` in one of the process's large-decode slots, reduced to ``min_side``; the full-size
    pixels are freed and the heap trimmed before the slot is given back, even when decoding fails."""
    with LARGE_DECODES.slot(limits.large_decodes, limits.wait_s):
        try:
            out, orientation = _decode(img, min_side, reduce=True)
            if out is not img:
                img.close()  # frees the full-size pixels now, whoever still holds the object
            return out, orientation
        except BaseException:
            img.close()  # the error's traceback would otherwise hold the decoded pixels
            raise
        finally:
            release_memory()


def _decode(img: Image.Image, min_side: int | None, *, reduce: bool) -> tuple[Image.Image, int]:
    """The first frame's pixels in RGB and the EXIF orientation still to apply; with ``reduce``, shrunk
    by a whole factor that keeps the short side at least ``min_side``."""
    img.load()
    # After loading: reading a PNG's EXIF would load it (and a failed load was then read as black), and
    # Pillow turns a TIFF upright while loading it (its size was upright from the header), dropping the tag.
    orientation = _exif_orientation(img)
    factor = min(img.size) // min_side if reduce and min_side else 1
    if factor >= 2:
        return _reduced_rgb(img, factor), orientation
    return _to_rgb(img), orientation


def _reduced_rgb(img: Image.Image, factor: int) -> Image.Image:
    """``_to_rgb(img).reduce(factor)``, converted and reduced in strips of rows: no second full-size copy."""
    width, height = img.size
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, STRIP_PIXELS // (width * factor))
    peak = _peak(img)
    for top in range(0, height, rows):
        strip = _to_rgb(img.crop((0, top, width, min(height, top + rows))), peak).reduce(factor)
        out.paste(strip, (0, top // factor))
    return out


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not lose the photo
        return 1


_TRANSPOSE = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def _apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    for op in _TRANSPOSE.get(orientation, []):
        img = img.transpose(op)
    return img


def _peak(img: Image.Image) -> float:
    """The white of a 16-bit or 32-bit greyscale picture (65535, or 255 for an "I" one that stays below 256)."""
    if img.mode.startswith("I;16"):
        return 65535.0
    if img.mode == "I":
        high = img.getextrema()[1]
        return 65535.0 if isinstance(high, (int, float)) and high > 255 else 255.0
    return 255.0


def _to_rgb(img: Image.Image, peak: float | None = None) -> Image.Image:
    """Convert any mode to RGB; transparency is flattened onto white, 16-bit is scaled down (``peak``:
    the white, when ``img`` is a strip of a larger picture)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: PIL's plain convert clips at 255, scale instead.
        arr = np.asarray(img, dtype=np.float32)
        white = peak or _peak(img)
        arr = np.clip(arr / white * 255.0, 0, 255).astype("uint8")
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


# Impulse (salt-and-pepper) noise. The test is an isolated spike: a pixel brighter than the brightest
# of its 8 neighbours (salt) or darker than the darkest (pepper) by more than SPIKE_MIN grey levels
# and by more than twice the neighbours' own range (brightest minus darkest). Edges, lines, corners
# and texture fail it (a neighbour is as bright, or the neighbourhood is busy); Gaussian sensor noise
# almost never passes it. A near-extreme test alone misses real noisy photos: JPEG-compressed or
# resized, their impulses are spikes of 30 to 100 levels over a mid-tone, nowhere near 0 or 255.
SPIKE_MIN = 12
# A photo is noisy when more than IMPULSE_SHARE of its pixels are spikes. Measured at the search
# decode: clean references and queries of the museum-paintings, coil100-views and eth80-views packs
# reach at most 0.066% (an embroidered canvas, whose stitch grid is a lattice of spikes), the seven
# noisy museum queries at least 0.17%, synthetic salt-and-pepper at 1% density about 0.9%. 0.1%
# leaves about 1.5x on either side.
IMPULSE_SHARE = 0.001
# Impulse noise is both salt and pepper; isolated dots of one kind only are content: the dots of i,
# full stops and commas of small text on paper (up to 0.6% of a synthetic page's pixels, all dark;
# with a bitmap font, the one-pixel holes of letters, all light), stars, glints, dust. Each kind
# must pass this share too (15 pixels of a 640x480 photo); the noisy museum queries have at least
# 0.02% of their rarer kind. The price: a noisy photo of plain white paper, on which salt cannot
# show, is not cleaned.
POLARITY_SHARE = 0.00005
# The check reads at most this many pixels, in bands spread over the photo (1 ms for 640x480, 3 ms
# for a 12 MP photo decoded whole): noise covers the whole photo, so a sample estimates its share.
CHECK_PIXELS = 1_000_000
# On a noisy photo, cleaning also replaces values that are near-extreme, a (non-strict) local
# extremum and CLEAN_DEVIATION away from their 3x3 median: salt and pepper that touch each other,
# which the isolated-spike test misses, at 0 or 255 as a digital source leaves them.
EXTREME_LOW, EXTREME_HIGH = 20, 235
CLEAN_DEVIATION = 60
# And, in grey, values PAIR_DEVIATION from their 3x3 median with at most one neighbour like them
# (within half that distance): JPEG-compressed impulses alone or touching one other, which are
# neither isolated spikes nor near-extreme. Lines, edges and corners have two such neighbours or
# more: 0.05% of a clean synthetic photo's pixels would change.
PAIR_DEVIATION = 30

_RING = np.ones((3, 3), np.uint8)
_RING[1, 1] = 0  # the 8 neighbours, without the pixel itself
_BAND = 64  # rows of one sampled band


def _spikes(arr: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Salt and pepper masks of isolated spikes in ``arr`` (uint8, 2-D or HxWxC), given the brightest
    (``hi``) and the darkest (``lo``) of each value's 8 neighbours."""
    spread = cv2.subtract(hi, lo)
    # Twice the spread, saturating at 255 (which no spike can exceed) as uint8 arithmetic does.
    limit = np.maximum(cv2.add(spread, spread), np.uint8(SPIKE_MIN))
    return cv2.subtract(arr, hi) > limit, cv2.subtract(lo, arr) > limit


def _neighbours(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return cv2.dilate(arr, _RING), cv2.erode(arr, _RING)


def _lone_outliers(grey: np.ndarray) -> np.ndarray:
    """Grey values ``PAIR_DEVIATION`` from their 3x3 median with at most one neighbour like them."""
    value = grey.astype(np.int16)
    deviation = np.abs(value - cv2.medianBlur(grey, 3))
    ys, xs = np.nonzero(deviation > PAIR_DEVIATION)  # a few percent of the pixels: count only there
    centre, near = value[ys, xs], deviation[ys, xs] // 2
    padded = np.pad(value, 1, constant_values=-1000)  # outside the picture: like nothing
    alike = np.zeros(len(ys), np.uint8)
    for dy in range(3):
        for dx in range(3):
            if (dy, dx) != (1, 1):
                alike += np.abs(padded[ys + dy, xs + dx] - centre) <= near
    lone = np.zeros(grey.shape, bool)
    lone[ys[alike <= 1], xs[alike <= 1]] = True
    return lone


def impulse_shares(img: Image.Image) -> tuple[float, float]:
    """The shares of salt and of pepper spikes in the grey of an RGB picture; a large one is read in
    bands of rows spread from top to bottom, ``CHECK_PIXELS`` in all."""
    w, h = img.size
    if w * h <= CHECK_PIXELS or h <= _BAND:
        bands = [img]
    else:  # cropped before conversion: a 12 MP photo is never converted whole
        n = max(1, CHECK_PIXELS // (_BAND * w))
        bands = [img.crop((0, int(y), w, int(y) + _BAND)) for y in np.linspace(0, h - _BAND, n)]
    salt = pepper = total = 0
    for band in bands:
        grey = cv2.cvtColor(np.asarray(band), cv2.COLOR_RGB2GRAY)
        s, p = _spikes(grey, *_neighbours(grey))
        salt += int(np.count_nonzero(s))
        pepper += int(np.count_nonzero(p))
        total += grey.size
    return salt / total, pepper / total


def remove_impulse_noise(img: Image.Image) -> tuple[Image.Image, bool]:
    """Detect salt-and-pepper noise and, when found, clean it; True when the picture was cleaned.

    Only the impulse values change (to their 3x3 median, or the 5x5 one where the 3x3 median is an
    impulse itself), so a noisy photo keeps its edges, and a clean photo comes back untouched.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    if min(img.size) < 5:
        return img, False
    salt, pepper = impulse_shares(img)
    if salt + pepper <= IMPULSE_SHARE or min(salt, pepper) <= POLARITY_SHARE:
        return img, False
    arr = np.asarray(img)
    grey = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    hi, lo = _neighbours(arr)
    median = cv2.medianBlur(arr, 3)
    # Impulses: spikes per channel (coloured impulses); in grey, spikes and lone outliers (all
    # channels of the pixel); near-extreme local extremes far from their median, also touching ones.
    salt_c, pepper_c = _spikes(arr, hi, lo)
    salt_g, pepper_g = _spikes(grey, *_neighbours(grey))
    impulse = salt_c | pepper_c | (salt_g | pepper_g | _lone_outliers(grey))[..., None]
    high, low = arr >= EXTREME_HIGH, arr <= EXTREME_LOW
    # Neighbours at the same extreme: up to 2 for touching impulses (99% of them at 10% density, 96%
    # at 20%), 3 and more inside a line or a patch of saturated colour, which stays. One filter
    # counts both: high neighbours in the low 4 bits, low ones in the high 4.
    counts = np.asarray(cv2.filter2D(high.view(np.uint8) + 16 * low.view(np.uint8), -1, _RING,
                                     borderType=cv2.BORDER_CONSTANT), dtype=np.uint8)
    alike = np.where(high, counts & 15, counts >> 4)
    extreme = (high & (arr >= hi)) | (low & (arr <= lo))
    impulse |= extreme & (alike <= 2) & (cv2.absdiff(arr, median) > CLEAN_DEVIATION)
    # Adaptive median: a 3x3 window with 5 impulses of one kind has an impulse for median (7 windows
    # in 100,000 at 10% density, 1 in 90 at 30%); the 5x5 median is then far from it, and used.
    median_extreme = (median <= EXTREME_LOW) | (median >= EXTREME_HIGH)
    if np.any(impulse & median_extreme):
        wide = cv2.medianBlur(arr, 5)
        median = np.where(median_extreme & (cv2.absdiff(median, wide) > CLEAN_DEVIATION), wide, median)
    return Image.fromarray(np.where(impulse, median, arr), "RGB"), True


THUMB_SIZE = 256  # the long side of a thumbnail (registry photos for monitors, scan and case reports)


def thumbnail_jpeg(img: Image.Image, size: int = THUMB_SIZE, quality: int = 85) -> bytes:
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
