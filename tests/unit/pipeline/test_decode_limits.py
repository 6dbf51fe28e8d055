"""The bounds of the one image decoder: first frame only, the pixel limit from the setting (not
Pillow's), a cap on concurrent large decodes, and the memory a large decode takes and gives back."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, TiffImagePlugin

import app.pipeline.decode as decode
from app.core.config import get_settings
from app.core.errors import BadImage, ImageTooLarge, ServerBusy
from app.pipeline.decode import decode_image
from app.pipeline.decode_limits import LARGE_DECODES, DecodeLimits
from tests.conftest import jpeg_bytes, png_bytes, random_photo
from tests.hostile_files import png_bilevel, png_claiming, tiff_with_pages

ROOT = Path(__file__).resolve().parents[3]
SMALL_LARGE = DecodeLimits(large_pixels=10_000, large_decodes=1, wait_s=10)  # 100x100 is already large


# -- First frame only -------------------------------------------------------------------------------


@pytest.fixture
def frames_untouched(monkeypatch):
    """Fail if anything counts the frames of a TIFF or a GIF (Pillow walks them all to count them)."""
    def walked(self):
        raise AssertionError("the decoder counted the frames")

    for cls in (TiffImagePlugin.TiffImageFile, GifImagePlugin.GifImageFile):
        monkeypatch.setattr(cls, "n_frames", property(walked))


def test_a_tiff_of_40000_pages_decodes_its_first_page_in_well_under_a_second(frames_untouched):
    first = random_photo(5)
    data = tiff_with_pages(first, 40_000)  # 4.6 MB; the old decoder counted its pages for 10 to 23 s
    t0 = time.perf_counter()
    out = decode_image(data)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    assert out.format == "TIFF" and out.image.size == first.size
    assert np.array_equal(np.asarray(out.image), np.asarray(first))  # the first page, not a 1-pixel one


def test_page_count_does_not_change_the_time(frames_untouched):
    first = random_photo(6)
    times = {}
    for pages in (500, 40_000):
        data = tiff_with_pages(first, pages)
        t0 = time.perf_counter()
        decode_image(data)
        times[pages] = time.perf_counter() - t0
    # Quadratic would be 6400x; the only work that grows with the file is its SHA-256 (4.6 MB: ~10 ms).
    assert times[40_000] < times[500] + 0.3, times


def test_an_animated_gif_is_decoded_from_its_first_frame_without_counting_frames(frames_untouched):
    frames = [Image.new("P", (64, 48), i) for i in range(200)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10)
    out = decode_image(buf.getvalue())
    assert out.format == "GIF" and out.image.size == (64, 48)


# -- The pixel limit is the setting ------------------------------------------------------------------


def test_the_pixel_limit_is_checked_from_the_header_before_decoding():
    claim = png_claiming(2000, 1000, b"not a zlib stream")  # 2 MP that cannot be decoded
    with pytest.raises(ImageTooLarge, match="2000x1000 pixels, more than the limit of 1,000,000"):
        decode_image(claim, max_pixels=1_000_000)  # refused from the header: the data is never read
    with pytest.raises(BadImage, match="damaged"):
        decode_image(claim, max_pixels=3_000_000)  # under the limit: decoding it finds the damage


@pytest.fixture
def env_settings(monkeypatch):
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def test_without_an_explicit_limit_the_setting_applies(env_settings):
    data = png_bytes(Image.new("RGB", (2000, 1000), (20, 40, 60)))
    env_settings.setenv("HM_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(ImageTooLarge):
        decode_image(data)
    env_settings.setenv("HM_MAX_IMAGE_PIXELS", "2000000")
    get_settings.cache_clear()
    assert decode_image(data).width == 2000


@pytest.mark.timeout(60)
def test_the_setting_not_pillows_default_limit_decides_above_89_megapixels():
    """Pillow refused 89.5 to 179 MP by a warning turned error, above 179 MP by its own error, whatever
    HM_MAX_IMAGE_PIXELS said: the setting alone decides now."""
    assert Image.MAX_IMAGE_PIXELS is None  # Pillow's process-wide check is off; ours runs per call
    data = png_bilevel(10_000, 10_000)  # 100 MP in 12 kB
    out = decode_image(data, max_pixels=120_000_000)
    assert (out.width, out.height) == (10_000, 10_000)
    assert min(out.image.size) >= decode.DEFAULT_MIN_SIDE and out.image.size[0] < 1000  # reduced
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=99_999_999)
    # Above twice Pillow's default: an undecodable 196 MP claim gets as far as decoding under a 200 MP setting.
    with pytest.raises(BadImage):
        decode_image(png_claiming(14_000, 14_000), max_pixels=200_000_000)


# -- Large decodes: reduced in strips, at most HM_LARGE_DECODES at once ---------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "PT", "RGBA", "LA", "I;16", "I", "CMYK"])
def test_strip_reduction_equals_converting_then_reducing(monkeypatch, mode):
    monkeypatch.setattr(decode, "STRIP_PIXELS", 3_000)  # many strips, and a last partial one
    rgb = random_photo(11, (301, 203))
    if mode == "PT":
        img = rgb.quantize(64)
        img.info["transparency"] = 5
    elif mode == "P":
        img = rgb.quantize(64)
    elif mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    elif mode == "I":
        img = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.int32) * 200)
    elif mode == "RGBA":
        img = rgb.copy()
        img.putalpha(Image.linear_gradient("L").resize(rgb.size))
    elif mode == "LA":
        img = rgb.convert("LA")
    else:
        img = rgb.convert(mode)
    for factor in (2, 3, 7):
        expected = decode._to_rgb(img).reduce(factor)
        assert np.array_equal(np.asarray(decode._reduced_rgb(img, factor)), np.asarray(expected)), factor


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP", "HEIF", "GIF", "BMP"])
def test_a_large_decode_is_reduced_to_min_side_with_the_original_size_reported(fmt):
    photo = random_photo(12, (900, 600))
    buf = io.BytesIO()
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.from_pillow(photo).save(buf, quality=90)
    else:
        photo.save(buf, fmt)
    out = decode_image(buf.getvalue(), min_side=100, limits=SMALL_LARGE)
    assert (out.width, out.height) == (900, 600)
    assert out.image.size == (150, 100)  # reduced 6x: the short side stays at least min_side
    assert LARGE_DECODES.running == 0


def test_a_large_decode_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side
    buf = io.BytesIO()
    random_photo(13, (600, 400)).save(buf, "PNG", exif=exif.tobytes())
    out = decode_image(buf.getvalue(), min_side=100, limits=SMALL_LARGE)
    assert (out.width, out.height) == (400, 600) and out.image.size == (100, 150)


@pytest.mark.parametrize("compression", [None, "tiff_lzw", "jpeg"])
@pytest.mark.parametrize("limits", [None, SMALL_LARGE], ids=["small", "large"])
def test_an_exif_rotated_tiff_is_turned_upright_once(compression, limits):
    """Pillow gives a TIFF's size upright and turns its pixels while loading: not a second time here."""
    photo = Image.new("RGB", (320, 240), (0, 0, 255))
    photo.paste((255, 0, 0), (0, 0, 40, 40))  # a red top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    photo.transpose(Image.Transpose.ROTATE_90).save(buf, "TIFF", exif=exif.tobytes(), compression=compression)
    out = decode_image(buf.getvalue(), min_side=100, limits=limits)
    assert (out.width, out.height) == (320, 240)
    r, g, b = out.image.getpixel((2, 2))
    assert r > 200 and b < 60, (r, g, b)


def _instrument(monkeypatch, hold_s: float = 0.3) -> dict:
    """Record how many pixel decodes run at once: each holds its slot ``hold_s`` longer."""
    seen = {"now": 0, "peak": 0}
    lock = threading.Lock()
    real = decode._decode

    def counted(img, min_side, *, reduce):
        with lock:
            seen["now"] += 1
            seen["peak"] = max(seen["peak"], seen["now"])
        try:
            time.sleep(hold_s)
            return real(img, min_side, reduce=reduce)
        finally:
            with lock:
                seen["now"] -= 1

    monkeypatch.setattr(decode, "_decode", counted)
    return seen


def _decode_in_threads(data: bytes, limits: DecodeLimits, n: int) -> list[object]:
    results: list[object] = [None] * n

    def run(i):
        try:
            results[i] = decode_image(data, limits=limits)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.mark.parametrize("capacity", [1, 2])
def test_large_decodes_never_overlap_beyond_the_setting(monkeypatch, capacity):
    seen = _instrument(monkeypatch)
    data = png_bytes(random_photo(14, (200, 150)))  # 30,000 pixels: large under SMALL_LARGE
    limits = DecodeLimits(large_pixels=10_000, large_decodes=capacity, wait_s=10)
    results = _decode_in_threads(data, limits, 4)
    assert all(isinstance(r, decode.DecodedImage) for r in results), results
    assert seen["peak"] == capacity  # 2 shows the instrument sees overlap when it is allowed
    assert LARGE_DECODES.running == 0


def test_small_decodes_do_not_wait_for_large_ones(monkeypatch):
    with LARGE_DECODES.slot(1, 1):  # the only large slot is taken
        t0 = time.perf_counter()
        out = decode_image(png_bytes(random_photo(15, (90, 90))), limits=DecodeLimits(large_pixels=10_000,
                                                                                    large_decodes=1, wait_s=5))
        assert time.perf_counter() - t0 < 2 and out.width == 90


def test_a_large_decode_that_waits_too_long_is_refused_as_busy():
    data = png_bytes(random_photo(16, (200, 150)))
    limits = DecodeLimits(large_pixels=10_000, large_decodes=1, wait_s=0.3)
    with LARGE_DECODES.slot(1, 1):
        t0 = time.perf_counter()
        with pytest.raises(ServerBusy) as caught:
            decode_image(data, limits=limits)
        waited = time.perf_counter() - t0
    assert 0.3 <= waited < 2
    exc = caught.value
    assert exc.status_code == 503 and exc.code == "server_busy" and exc.headers == {"Retry-After": "1"}
    assert "large images" in exc.message
    assert decode_image(data, limits=limits).width == 200  # the slot is free again


def test_a_waiter_gets_the_slot_when_it_frees(monkeypatch):
    seen = _instrument(monkeypatch, hold_s=0.5)
    data = png_bytes(random_photo(17, (200, 150)))
    limits = DecodeLimits(large_pixels=10_000, large_decodes=1, wait_s=5)  # 2 x 0.5 s fits in 5 s
    results = _decode_in_threads(data, limits, 2)
    assert all(isinstance(r, decode.DecodedImage) for r in results) and seen["peak"] == 1


def test_a_failed_large_decode_gives_its_slot_back():
    broken = png_bytes(random_photo(18, (400, 300)))
    with pytest.raises(BadImage):
        decode_image(broken[: len(broken) // 2], limits=SMALL_LARGE)
    assert LARGE_DECODES.running == 0


def test_small_jpeg_decodes_are_not_large_after_dct_scaling(monkeypatch):
    """A large JPEG decoded at 1/8 scale is not a large decode: the gate counts pixels as decoded."""
    seen = _instrument(monkeypatch, hold_s=0)
    data = jpeg_bytes(random_photo(19, (4000, 3000)))
    with LARGE_DECODES.slot(1, 1):
        out = decode_image(data, limits=DecodeLimits(large_pixels=1_000_000, large_decodes=1, wait_s=0.2))
    assert (out.width, out.height) == (4000, 3000) and out.image.size == (500, 375) and seen["peak"] == 1


# -- Memory ---------------------------------------------------------------------------------------------

MEMORY_PROBE = r"""
import gc, json
from tests.hostile_files import png_of
from app.pipeline.decode import decode_image
from tests.conftest import png_bytes, random_photo

def status_mb(field):  # VmRSS: now; VmHWM: the high-water mark of this process's own memory
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024

data = png_of(11_000, 8_000)  # the issue's file: 88 MP, RGB, one colour
decode_image(png_bytes(random_photo(1, (64, 48))))  # lazy imports and first allocations
gc.collect()
base = status_mb("VmRSS")
try:  # reset the high-water mark to now, so it measures the decodes alone
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
held = []
for _ in range(3):
    out = decode_image(data, max_pixels=120_000_000)
    held.append(status_mb("VmRSS"))
    del out
    gc.collect()
print(json.dumps({"base": base, "peak": status_mb("VmHWM"), "held": held, "after": status_mb("VmRSS")}))
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's heap")
def test_an_88_megapixel_png_costs_one_decoded_picture_and_gives_it_back():
    """An 88 MP PNG took the server from 784 MB to 1.89 GB for good. Pillow holds a decoded RGB picture
    at 4 bytes a pixel (352 MB here) and cannot decode a PNG in parts, so that is the bound on the
    peak; nothing else is full size (conversion and reduction go by strips), what the search gets is
    reduced (479x348), and the heap is trimmed so the memory goes back after each decode."""
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE], cwd=ROOT, capture_output=True, text=True,
                          timeout=110, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    decoded_mb = 11_000 * 8_000 * 4 / 2**20  # 336 MiB
    assert m["peak"] - m["base"] < decoded_mb + 64, m
    assert max(m["held"]) - m["base"] < 32, m  # the old decoder returned the full picture: +340 MB
    assert m["after"] - m["base"] < 32, m  # and given back, decode after decode
