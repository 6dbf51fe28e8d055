"""A corpus of broken, hostile and awkward files, generated (nothing binary is committed).

Each entry says what the API must answer: an error status and code with a message, or success
with the upright picture ``reference`` (so a real photo in an odd encoding is checked to be found).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

from PIL import Image

from tests.conftest import jpeg_bytes, png_bytes


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    status: int  # 200: a real photo the search must answer (and find when ``finds`` is set)
    code: str | None = None
    finds: bool = False  # the reference artefact must be the first result
    filename: str = "upload.jpg"
    content_type: str = "image/jpeg"


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` one-bit pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def png_bomb() -> bytes:
    """20000 x 20000 pixels (400 megapixels) in about 50 kB: zeros compress 1000 to 1."""
    width = height = 20_000
    row = b"\0" * (1 + width // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return png_claiming(width, height, idat)


def png_of(width: int, height: int, *, colour: tuple[int, ...] = (0, 0, 0), level: int = 1) -> bytes:
    """A complete PNG of ``width`` x ``height`` pixels of one colour (RGB, or 8-bit grey when ``colour``
    has one value), made row by row: 88 MP in 1.1 MB without ever holding the pixels."""
    grey = len(colour) == 1
    row = b"\0" + bytes(colour) * width
    z = zlib.compressobj(level)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0 if grey else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_bilevel(width: int, height: int) -> bytes:
    """A complete one-bit PNG, all black: 100 MP in 12 kB, decoded as one byte a pixel."""
    row = b"\0" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    return png_claiming(width, height, b"".join(z.compress(row) for _ in range(height)) + z.flush())


def tiff_with_pages(first: Image.Image, pages: int) -> bytes:
    """A TIFF whose first page is ``first`` followed by ``pages`` more pages of one grey pixel each
    (114 bytes a page: 40,000 in 4.6 MB). Counting the pages of such a file is quadratic in Pillow."""
    buf = io.BytesIO()
    first.save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    assert data[:4] == b"II*\0"  # little-endian, as Pillow writes it
    ifd = struct.unpack_from("<I", data, 4)[0]
    next_at = ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0]
    pixel = len(data)
    data += b"\x80\0"  # the one pixel every added page points to (padded to an even offset)
    start, size = len(data), 2 + 9 * 12 + 4
    struct.pack_into("<I", data, next_at, start if pages else 0)
    page = bytearray()
    for i in range(pages):
        # width, height, bits per sample, no compression, min-is-black, strip offset, samples per pixel,
        # rows per strip, strip byte count: sorted by tag, every value inline.
        entries = [(256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, pixel), (277, 3, 1),
                   (278, 3, 1), (279, 4, 1)]
        page += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            page += struct.pack("<HHII", tag, kind, 1, value)
        page += struct.pack("<I", start + (i + 1) * size if i + 1 < pages else 0)
    return bytes(data + page)


def jpeg_claiming(width: int, height: int, base: bytes) -> bytes:
    """A real JPEG with its frame header rewritten to claim other dimensions."""
    i = base.index(b"\xff\xc0")
    return base[: i + 5] + struct.pack(">HH", height, width) + base[i + 9 :]


def _broken_png_crc(img: Image.Image) -> bytes:
    data = bytearray(png_bytes(img))
    i = data.index(b"IHDR")
    data[i + 4 + 13] ^= 0xFF  # the header chunk's checksum no longer fits its content
    return bytes(data)


def _exif_rotated(reference: Image.Image) -> bytes:
    # Stored on its side as phone cameras do, with the EXIF tag that turns it upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(reference.transpose(Image.Transpose.ROTATE_90), quality=92, exif=exif.tobytes())


def _garbage_exif(reference: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 77  # not an orientation
    exif[0x010F] = "A" * 5000
    return jpeg_bytes(reference, quality=92, exif=exif.tobytes())


def _heic(reference: Image.Image) -> bytes:
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_pillow(reference).save(buf, quality=92)
    return buf.getvalue()


def _multipage_tiff(reference: Image.Image) -> bytes:
    buf = io.BytesIO()
    reference.save(buf, "TIFF", save_all=True, append_images=[Image.new("RGB", reference.size, (0, 0, 0))] * 2)
    return buf.getvalue()


def _animated_gif(reference: Image.Image) -> bytes:
    frames = [reference.quantize(256)] + [Image.new("P", reference.size, i) for i in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _palette_with_transparency(reference: Image.Image) -> bytes:
    pal = reference.quantize(255)
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=254)
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("photo.jpg", b"not really")
    return buf.getvalue()


def corpus(reference: Image.Image) -> list[Hostile]:
    """At least 25 kinds of input; ``reference`` is a registered photo (RGB, a few hundred pixels)."""
    jpeg = jpeg_bytes(reference, quality=92)
    png = png_bytes(reference)
    svg = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
           b'<image href="http://127.0.0.1:9/x.png"/><script>alert(1)</script></svg>')
    return [
        Hostile("zero bytes", b"", 422, "bad_image"),
        Hostile("one byte", b"\xff", 422, "bad_image"),
        Hostile("text named .jpg", b"hello, this is a text file\n" * 20, 422, "bad_image"),
        Hostile("html with script named .png", b"<html><script>alert(document.cookie)</script></html>", 422,
                "bad_image", filename="x.png", content_type="image/png"),
        Hostile("svg with script and external image", svg, 422, "bad_image", filename="x.svg",
                content_type="image/svg+xml"),
        Hostile("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 422, "bad_image"),
        Hostile("zip named .jpg", _zip(), 422, "bad_image"),
        Hostile("random bytes", bytes((i * 7919 + 13) % 256 for i in range(4096)), 422, "bad_image"),
        Hostile("jpeg header only", jpeg[:20], 422, "bad_image"),
        Hostile("truncated jpeg", jpeg[: len(jpeg) // 2], 422, "bad_image"),
        Hostile("truncated png", png[: len(png) // 2], 422, "bad_image", content_type="image/png"),
        Hostile("png with a corrupt chunk", _broken_png_crc(reference), 422, "bad_image"),
        Hostile("gif header and garbage", b"GIF89a" + b"\x00\xff" * 100, 422, "bad_image"),
        Hostile("icon (unsupported format)", _encode(reference.resize((64, 64)), "ICO"), 422, "bad_image"),
        Hostile("png decompression bomb", png_bomb(), 413, "image_too_large", content_type="image/png"),
        Hostile("png claiming 50000x50000", png_claiming(50_000, 50_000), 413, "image_too_large"),
        Hostile("jpeg claiming 50000x50000", jpeg_claiming(50_000, 50_000, jpeg), 413, "image_too_large"),
        Hostile("cmyk jpeg", jpeg_bytes(reference.convert("CMYK"), quality=95), 200, finds=True),
        Hostile("16-bit greyscale png", png_bytes(Image.fromarray(
            (__import__("numpy").asarray(reference.convert("L"), dtype="uint16") * 257))), 200),
        Hostile("palette png with transparency", _palette_with_transparency(reference), 200, finds=True),
        Hostile("animated gif", _animated_gif(reference), 200, finds=True),
        Hostile("exif-rotated jpeg", _exif_rotated(reference), 200, finds=True),
        Hostile("jpeg with garbage exif", _garbage_exif(reference), 200, finds=True),
        Hostile("heic", _heic(reference), 200, finds=True, filename="IMG_0001.HEIC", content_type="image/heic"),
        Hostile("multi-page tiff", _multipage_tiff(reference), 200, finds=True, filename="scan.tif"),
        # Counting its pages took 10 s (quadratic in Pillow); only the first page is ever read.
        Hostile("tiff of 40,000 one-pixel pages", tiff_with_pages(reference, 40_000), 200, finds=True,
                filename="pages.tif", content_type="image/tiff"),
        # 88 MP in 1.1 MB: under the 120 MP limit, so decoded (reduced in strips, its memory given back).
        Hostile("88 MP png", png_of(11_000, 8_000), 200, filename="big.png", content_type="image/png"),
        Hostile("png of 130 MP, over the pixel limit", png_bilevel(13_000, 10_000), 413, "image_too_large",
                filename="big.png", content_type="image/png"),
        Hostile("webp", _encode(reference, "WEBP", quality=92), 200, finds=True),
        Hostile("bmp", _encode(reference, "BMP"), 200, finds=True),
        Hostile("polyglot: jpeg with html and zip appended", jpeg + b"<html><script>alert(1)</script>" + _zip(),
                200, finds=True, filename="x.html", content_type="text/html"),
        Hostile("png sent as text/plain", png, 200, finds=True, content_type="text/plain"),
        Hostile("1x1 pixel", png_bytes(Image.new("RGB", (1, 1), (120, 80, 40))), 200),
        Hostile("8000x2 sliver", png_bytes(Image.new("RGB", (8000, 2), (10, 200, 30))), 200),
        Hostile("path-traversal file name", jpeg, 200, finds=True, filename="../../../../etc/passwd.jpg"),
        Hostile("file name with NUL and 1000 characters", jpeg, 200, finds=True,
                filename="a\x00b" + "c" * 1000 + ".jpg"),
    ]
