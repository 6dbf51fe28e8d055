"""Decoding uploaded bytes into an RGB picture the encoders can use.

Phone photos are 12 MP and more while the models look at a few hundred pixels, so JPEGs are
decoded with ``Image.draft`` at a reduced scale (DCT scaling: about 22 ms instead of 150 ms or more
for a 12 MP photo on 2 cores) while staying at least ``min_side`` pixels on their short side.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from app.core.errors import BadImage, ImageTooLarge
from app.core.files import sha256_hex

if TYPE_CHECKING:
    from app.pipeline.signature import PhotoAnalysis

try:  # HEIC/HEIF: the format of most iPhone photos
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - declared dependency, but the service still runs without
    pillow_heif = None  # type: ignore[assignment]  # the module, or None without it

ACCEPTED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "TIFF", "HEIF", "AVIF", "BMP", "GIF"}
ACCEPTED_HUMAN = "JPEG, PNG, WebP, TIFF, HEIC/HEIF, BMP or GIF"

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


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 120_000_000,
    min_side: int | None = DEFAULT_MIN_SIDE,
) -> DecodedImage:
    """Open, check and decode image bytes. ``min_side=None`` decodes at full resolution."""
    if not data:
        raise BadImage("The file is empty.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = (img.format or "").upper()
            if fmt not in ACCEPTED_FORMATS:
                raise BadImage(f"Unsupported image format {fmt or 'unknown'}; send {ACCEPTED_HUMAN}.")
            width, height = img.size
            if width <= 0 or height <= 0:
                raise BadImage("The image has no pixels.")
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"The image is {width}x{height} pixels, more than the limit of {max_pixels:,} pixels."
                )
            orientation = _exif_orientation(img)
            if min_side and fmt in ("JPEG", "MPO"):
                short = min(width, height)
                if short > 2 * min_side:
                    scale = min_side / short
                    img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            img.load()
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF / multi-page TIFF: the first frame is the photo
            img = _to_rgb(img)
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            if orientation and orientation != 1:
                img = _apply_orientation(img, orientation)
    except (BadImage, ImageTooLarge):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"The image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage(f"The file is not an image we can read; send {ACCEPTED_HUMAN}.") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise BadImage(f"The image is damaged or truncated and cannot be decoded ({exc}).") from exc
    except MemoryError as exc:
        raise ImageTooLarge("The image needs too much memory to decode.") from exc
    return DecodedImage(image=img, sha256=sha256_hex(data), format=fmt, width=width, height=height)


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


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is flattened onto white, 16-bit is scaled down."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: PIL's plain convert clips at 255, scale instead.
        import numpy as np

        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0, 0, 255).astype("uint8")
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


THUMB_SIZE = 256  # the long side of a thumbnail (registry photos for monitors, scan and case reports)


def thumbnail_jpeg(img: Image.Image, size: int = THUMB_SIZE, quality: int = 85) -> bytes:
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
