"""Decoding: formats, orientation, draft decoding, and clear errors for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.core.errors import BadImage, ImageTooLarge
from app.pipeline.decode import DEFAULT_MIN_SIDE, decode_image
from tests.conftest import jpeg_bytes, png_bytes, random_photo


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_common_formats_decode_to_rgb(fmt):
    img = random_photo(5, (200, 150))
    out = decode_image(encode(img, fmt))
    assert out.image.mode == "RGB" and out.image.size == (200, 150)
    assert (out.width, out.height) == (200, 150) and len(out.sha256) == 64


def test_heic_phone_photo_decodes():
    pillow_heif = pytest.importorskip("pillow_heif")
    img = random_photo(6, (256, 192))
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, quality=90)
    out = decode_image(buf.getvalue())
    assert out.format == "HEIF" and out.image.size == (256, 192)


def test_large_jpeg_is_draft_decoded_but_keeps_its_true_size():
    img = random_photo(7, (4000, 3000))
    out = decode_image(jpeg_bytes(img))
    assert (out.width, out.height) == (4000, 3000)
    assert DEFAULT_MIN_SIDE <= min(out.image.size) < 2 * DEFAULT_MIN_SIDE  # the smallest DCT scale that keeps it
    full = decode_image(jpeg_bytes(img), min_side=None)
    assert full.image.size == (4000, 3000)


def test_exif_orientation_is_applied():
    img = random_photo(8, (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    out = decode_image(jpeg_bytes(img, exif=exif.tobytes()))
    assert out.image.size == (200, 300) and (out.width, out.height) == (200, 300)
    expected = np.asarray(img.transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    assert np.abs(np.asarray(out.image, dtype=np.int16) - expected).mean() < 6


def test_transparency_and_16_bit_are_converted():
    rgba = Image.new("RGBA", (50, 40), (255, 0, 0, 0))
    assert decode_image(png_bytes(rgba)).image.getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray((np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16))
    out = decode_image(png_bytes(deep)).image
    assert out.mode == "RGB" and out.getpixel((63, 63))[0] > 200 and out.getpixel((0, 0))[0] < 10


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"GIF89a not really", "not an image"),
        (b"hello, world", "not an image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "not an image"),
    ],
)
def test_non_images_are_bad_images(data, message):
    with pytest.raises(BadImage, match=message):
        decode_image(data)


def test_truncated_jpeg_is_a_bad_image():
    data = jpeg_bytes(random_photo(9, (800, 600)))
    with pytest.raises(BadImage, match="truncated"):
        decode_image(data[: len(data) // 3])


def test_pixel_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (12000, 12000)), "PNG")  # tiny file, 144 MP
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(bomb, max_pixels=50_000_000)


def test_unsupported_format_is_named():
    data = encode(Image.new("RGB", (10, 10)), "PPM")
    with pytest.raises(BadImage, match="Unsupported image format PPM"):
        decode_image(data)
