"""Decoding: formats, orientation, draft decoding, and clear errors for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.core.errors import BadImage, ImageTooLarge
from app.pipeline.decode import DEFAULT_MIN_SIDE, decode_image, remove_impulse_noise
from tests.conftest import jpeg_bytes, png_bytes, random_photo
from tests.unit.pipeline.pictures import reopen, textured


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


# Impulse (salt-and-pepper) noise: found and cleaned at decode, clean photos left alone.


def salt_and_pepper(img: Image.Image, density: float, seed: int = 0, per_channel: bool = False) -> Image.Image:
    """``density`` of the pixels (or of the channel values) set to 0 or 255, half each."""
    arr = np.array(img)
    draw = np.random.default_rng(seed).random(arr.shape if per_channel else arr.shape[:2])
    arr[draw < density / 2] = 0
    arr[(draw >= density / 2) & (draw < density)] = 255
    return Image.fromarray(arr)


def mean_abs_error(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


@pytest.mark.parametrize("density", [0.02, 0.10])
@pytest.mark.parametrize("per_channel", [False, True])
def test_salt_and_pepper_is_detected_and_cleaned(density, per_channel):
    photo = textured(21)
    noisy = salt_and_pepper(photo, density, seed=1, per_channel=per_channel)
    cleaned, denoised = remove_impulse_noise(noisy)
    assert denoised and cleaned.mode == "RGB" and cleaned.size == photo.size
    assert mean_abs_error(cleaned, photo) * 5 < mean_abs_error(noisy, photo)
    # Only impulses change: the pixels the noise left alone keep their values (but for a few).
    untouched = np.all(np.asarray(noisy) == np.asarray(photo), axis=2)
    changed = np.any(np.asarray(cleaned) != np.asarray(noisy), axis=2)
    assert (changed & untouched).sum() < 0.01 * untouched.sum()


@pytest.mark.parametrize("quality", [95, 80])
def test_jpeg_compressed_impulse_noise_is_detected(quality):
    # Compressed, impulses are no longer 0 or 255 but spikes over their neighbours: still found.
    noisy = reopen(salt_and_pepper(textured(22), 0.01, seed=2), quality)
    cleaned, denoised = remove_impulse_noise(noisy)
    assert denoised
    assert mean_abs_error(cleaned, textured(22)) < mean_abs_error(noisy, textured(22))


def turntable_shot(seed: int) -> Image.Image:
    """A bright, shaded object on a black background with a few one-pixel specular highlights."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:360, :480]
    inside = ((xx - 240) / 120.0) ** 2 + ((yy - 180) / 140.0) ** 2 < 1
    shade = np.clip(230 - 0.4 * np.hypot(xx - 200, yy - 120), 60, 255)
    arr = np.stack([np.where(inside, shade * k, 0) for k in (1.0, 0.85, 0.6)], axis=2).astype(np.uint8)
    for _ in range(12):
        y, x = int(rng.integers(100, 260)), int(rng.integers(150, 330))
        if inside[y, x]:
            arr[y, x] = 255
    return Image.fromarray(arr)


def text_page(font_size: int | None = 10) -> Image.Image:
    """Black text on white paper, dense with the one-pixel dots of i, full stops and colons."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(font_size) if font_size else ImageFont.load_default_imagefont()
    page = Image.new("RGB", (480, 360), (250, 248, 240))
    draw = ImageDraw.Draw(page)
    for row in range(4, 356, (font_size or 10) + 3):
        draw.text((6, row), 'In the year 1.6.8.2, i.e. ca. 1682; it is said: "ibid., p. 3" - fin. ' * 2,
                  fill=(10, 10, 10), font=font)
    return page


def natural_photo(seed: int) -> Image.Image:
    """Smooth gradients and shapes with sensor-like Gaussian noise."""
    arr = np.asarray(random_photo(seed, (480, 360)), dtype=np.float32)
    arr += np.random.default_rng(seed).normal(0, 5, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "make",
    [
        lambda: turntable_shot(1),
        lambda: reopen(turntable_shot(2), 85),
        lambda: text_page(10),  # its dots are 0.3% of the pixels, but dark ones only
        lambda: text_page(None),  # the bitmap font: light one-pixel holes only
        lambda: reopen(text_page(12), 80),
        lambda: natural_photo(3),
        lambda: textured(23),
        lambda: reopen(textured(24), 70),
        lambda: reopen(natural_photo(4), 60),
    ],
    ids=["turntable", "turntable-jpeg", "text", "text-bitmap-font", "text-jpeg", "natural", "textured",
         "textured-jpeg", "natural-jpeg"],
)
def test_clean_photos_are_not_flagged(make):
    photo = make()
    out, denoised = remove_impulse_noise(photo)
    assert not denoised
    assert np.array_equal(np.asarray(out), np.asarray(photo))


def test_decode_cleans_a_noisy_photo_and_says_so():
    photo = textured(25)
    noisy = decode_image(png_bytes(salt_and_pepper(photo, 0.03, seed=3)))
    assert noisy.denoised and noisy.image.size == photo.size
    assert mean_abs_error(noisy.image, photo) < 1.0
    clean = decode_image(png_bytes(photo))
    assert not clean.denoised and np.array_equal(np.asarray(clean.image), np.asarray(photo))

