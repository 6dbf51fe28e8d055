"""What happens to a registry photo on its way into a sale listing, as seeded, repeatable transforms.

Auction houses and marketplace sellers crop, rotate, re-light, re-compress, watermark and
screenshot photos, and photograph objects on their own tables or together in one lot. A "listing
transforms" pack applies each of these to registry photos so same-object matching can be measured
on any registry (``scripts/make_listing_pack.py``).

A "twin" (``twin``) is the opposite case: the registered photo with one region of the object altered
(another label, a repainted patch, a different inscription), i.e. a near twin that the service must
never call ``match``. It is not in ``TRANSFORMS``, which all keep the object the same.
"""

from __future__ import annotations

import io
import math
import random
from typing import TYPE_CHECKING, Callable, NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

if TYPE_CHECKING:
    from app.registry.store import RegistryStore

LISTING_MIN_SIDE = 320

# How a twin differs from its original: another label or patch pasted in, a region repainted, the
# inscription replaced. `twin` picks one with its rng; `write_pack` cycles through them.
TWIN_KINDS = ("label", "repaint", "inscription")
# The altered shape covers this share of the object's bounding box...
TWIN_AREA = (0.20, 0.35)
# ...and at most this share of the object's own pixels (so at least 65% of the object is unchanged).
TWIN_MAX_OBJECT_SHARE = 0.35
# A pixel belongs to the object when one channel differs from the border colour by more than this.
OBJECT_THRESHOLD = 40


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def crop(img: Image.Image, rng: random.Random) -> Image.Image:
    """Keep 60-85% of each side, off-centre: a seller framing the object tightly."""
    w, h = img.size
    fw, fh = rng.uniform(0.6, 0.85), rng.uniform(0.6, 0.85)
    cw, ch = round(w * fw), round(h * fh)
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def rotate(img: Image.Image, rng: random.Random) -> Image.Image:
    angle = rng.choice([-1, 1]) * rng.uniform(8, 30)
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=_border_colour(img))


def perspective(img: Image.Image, rng: random.Random) -> Image.Image:
    """The photo taken from an angle: corners moved inwards by up to 15% of the side."""
    w, h = img.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    jitter = [(rng.uniform(0, 0.15) * w, rng.uniform(0, 0.15) * h) for _ in range(4)]
    dst = np.array([[jitter[0][0], jitter[0][1]], [w - jitter[1][0], jitter[1][1]],
                    [w - jitter[2][0], h - jitter[2][1]], [jitter[3][0], h - jitter[3][1]]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    out = cv2.warpPerspective(np.asarray(img.convert("RGB")), m, (w, h), flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=_border_colour(img))
    return Image.fromarray(out)


def colour_shift(img: Image.Image, rng: random.Random) -> Image.Image:
    """Other light: white balance, brightness, contrast and saturation all change."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    gains = np.array([rng.uniform(0.8, 1.2) for _ in range(3)], dtype=np.float32)
    out = Image.fromarray(np.clip(arr * gains, 0, 255).astype(np.uint8))
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.7, 1.3))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Color(out).enhance(rng.uniform(0.6, 1.4))


def blur(img: Image.Image, rng: random.Random) -> Image.Image:
    radius = rng.uniform(1.0, 2.5) * max(img.size) / 800
    return img.filter(ImageFilter.GaussianBlur(max(radius, 0.8)))


def jpeg_q30(img: Image.Image, rng: random.Random) -> Image.Image:
    return _jpeg(img, 30)


def watermark(img: Image.Image, rng: random.Random) -> Image.Image:
    """A dealer's name across the photo, semi-transparent, and a price tag in a corner."""
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(10, base.width // 12)
    font = _font(size)
    text = rng.choice(["ANTIQUES GALLERY", "www.ancient-art.example", "LOT 214", "ARTEFACT MARKET"])
    for i in range(3):
        y = round(base.height * (0.2 + 0.3 * i))
        draw.text((rng.randint(0, max(1, base.width // 5)), y), text, fill=(255, 255, 255, 110), font=font)
    draw.rectangle((0, base.height - size * 2, base.width // 2, base.height), fill=(20, 20, 20, 200))
    draw.text((size // 2, base.height - round(size * 1.6)), f"${rng.randint(100, 9000)}", fill=(255, 255, 255, 255),
              font=font)
    return Image.alpha_composite(base, layer).convert("RGB")


def screenshot(img: Image.Image, rng: random.Random) -> Image.Image:
    """The listing page captured on a phone: white page, header bar, text lines below the photo."""
    w, h = img.size
    scale = rng.uniform(0.6, 0.8)
    photo = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    page = Image.new("RGB", (w, round(h * 1.35)), (250, 250, 250))
    draw = ImageDraw.Draw(page)
    bar = round(h * 0.08)
    draw.rectangle((0, 0, w, bar), fill=(rng.randint(0, 80), rng.randint(60, 140), rng.randint(120, 220)))
    x0 = (w - photo.width) // 2
    page.paste(photo, (x0, bar + round(h * 0.03)))
    y = bar + round(h * 0.03) + photo.height + round(h * 0.03)
    for _ in range(4):
        draw.rectangle((round(w * 0.08), y, round(w * rng.uniform(0.4, 0.9)), y + max(2, h // 60)),
                       fill=(120, 120, 120))
        y += max(6, h // 25)
    return page


def composite(img: Image.Image, rng: random.Random, background: Image.Image | None = None) -> Image.Image:
    """The object photographed on another surface: pasted at 40-60% of the frame onto a texture."""
    bg = background if background is not None else textured_background(img.size, rng)
    bg = bg.convert("RGB").resize(img.size, Image.Resampling.BILINEAR)
    scale = rng.uniform(0.4, 0.6)
    obj = img.convert("RGB").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                    Image.Resampling.BILINEAR)
    x0 = rng.randint(0, bg.width - obj.width)
    y0 = rng.randint(0, bg.height - obj.height)
    bg.paste(obj, (x0, y0))
    return bg


def downscale_300(img: Image.Image, rng: random.Random) -> Image.Image:
    out = img.copy()
    out.thumbnail((300, 300), Image.Resampling.BILINEAR)
    return _jpeg(out, 75)


def lot(images: list[Image.Image], rng: random.Random) -> Image.Image:
    """Several objects photographed together, side by side on one surface (an auction lot)."""
    h = max(i.height for i in images)
    scaled = [i.convert("RGB").resize((max(1, round(i.width * h / i.height)), h), Image.Resampling.BILINEAR)
              for i in images]
    gap = round(h * 0.15)
    w = sum(i.width for i in scaled) + gap * (len(scaled) + 1)
    canvas = textured_background((w, h + 2 * gap), rng)
    x = gap
    for i in scaled:
        canvas.paste(i, (x, gap + rng.randint(-gap // 2, gap // 2)))
        x += i.width + gap
    return canvas


def textured_background(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A cloth or wood-like surface: a smooth random colour field with fine grain."""
    nrng = np.random.default_rng(rng.randrange(2**32))
    w, h = size
    small = nrng.integers(40, 220, size=(4, 5, 3)).astype(np.float32)
    small = (0.4 * small + 0.6 * small.mean(axis=2, keepdims=True)).astype(np.uint8)  # muted, like a table
    field = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    grain = nrng.normal(0, 12, size=(h, w, 1)).astype(np.float32)
    return Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8))


def _listing_size(img: Image.Image, side: int = LISTING_MIN_SIDE) -> Image.Image:
    """Listing photos are rarely smaller than a few hundred pixels, even of a small coin."""
    scale = side / max(img.size)
    if scale <= 1:
        return img
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)


def _border_colour(img: Image.Image) -> tuple[int, int, int]:
    arr = np.asarray(img.convert("RGB"))
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    r, g, b = (int(v) for v in np.median(border, axis=0))
    return r, g, b


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


# --- twins: the same photo with one region of the object altered --------------------------------------


class TwinEdit(NamedTuple):
    """A twin before its listing condition: the photo, how it was altered, and where.

    ``region`` is the altered shape's bounding rectangle (x0, y0, x1, y1), ``ellipse`` whether the shape
    is the ellipse inscribed in it; every pixel outside the shape is the original's.
    """

    image: Image.Image
    kind: str
    region: tuple[int, int, int, int]
    ellipse: bool
    box: tuple[int, int, int, int]  # the object's extent (``object_box``)


def object_box(img: Image.Image) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The object's extent and mask: pixels that differ from the border colour, and their bounding box
    (x0, y0, x1, y1), ends exclusive. The central 80% of the photo when nothing stands out."""
    arr = np.asarray(img.convert("RGB"), dtype=np.int16)
    h, w = arr.shape[:2]
    diff = np.abs(arr - np.array(_border_colour(img), dtype=np.int16)).max(axis=2)
    mask = cv2.morphologyEx((diff > OBJECT_THRESHOLD).astype(np.uint8), cv2.MORPH_OPEN,
                            np.ones((3, 3), np.uint8)) > 0
    ys, xs = np.nonzero(mask)
    if len(xs) >= 0.02 * w * h:
        # Percentiles, so that a few stray pixels (dust, a ruler's tick) do not stretch the box.
        x0, x1 = (int(v) for v in np.percentile(xs, [0.5, 99.5]))
        y0, y1 = (int(v) for v in np.percentile(ys, [0.5, 99.5]))
        if x1 - x0 >= 16 and y1 - y0 >= 16:
            return (x0, y0, x1 + 1, y1 + 1), mask
    box = (round(w * 0.1), round(h * 0.1), round(w * 0.9), round(h * 0.9))
    mask = np.zeros((h, w), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return box, mask


def _shape_mask(size: tuple[int, int], ellipse: bool) -> np.ndarray:
    w, h = size
    if not ellipse:
        return np.ones((h, w), dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2 <= 1


def _twin_region(box: tuple[int, int, int, int], mask: np.ndarray,
                 rng: random.Random) -> tuple[tuple[int, int, int, int], bool]:
    """A rectangle or ellipse inside the object's box covering TWIN_AREA of it, mostly on the object
    (at least 60% of its pixels) and over at most TWIN_MAX_OBJECT_SHARE of the object's pixels."""
    bx0, by0, bx1, by1 = box
    bw, bh = bx1 - bx0, by1 - by0
    on_object = mask[by0:by1, bx0:bx1]
    object_px = max(1, int(on_object.sum()))
    ellipse = rng.random() < 0.4
    area = rng.uniform(*TWIN_AREA)
    best: tuple[float, tuple[int, int, int, int]] | None = None
    for attempt in range(60):
        if attempt and attempt % 20 == 0:
            area = max(0.8 * area, 0.15)  # a small or ragged object: try a smaller region
        stretch = rng.uniform(0.6, 1.6)
        rect_area = area * (4 / math.pi if ellipse else 1)  # an ellipse fills pi/4 of its rectangle
        rw = min(bw, max(4, round(bw * math.sqrt(rect_area * stretch))))
        rh = min(bh, max(4, round(bh * math.sqrt(rect_area / stretch))))
        x0, y0 = rng.randint(0, bw - rw), rng.randint(0, bh - rh)
        shape = _shape_mask((rw, rh), ellipse)
        hit = int((on_object[y0:y0 + rh, x0:x0 + rw] & shape).sum())
        on, cover = hit / max(1, int(shape.sum())), hit / object_px
        region = (bx0 + x0, by0 + y0, bx0 + x0 + rw, by0 + y0 + rh)
        if on >= 0.6 and cover <= TWIN_MAX_OBJECT_SHARE:
            return region, ellipse
        score = on if cover <= TWIN_MAX_OBJECT_SHARE else -cover
        if best is None or score > best[0]:
            best = (score, region)
    assert best is not None
    return best[1], ellipse


def _is_grey(img: Image.Image) -> bool:
    arr = np.asarray(img.convert("RGB"), dtype=np.int16)
    return int(np.abs(arr - arr.mean(axis=2, keepdims=True)).max()) <= 3


def _far_colour(mean: np.ndarray, rng: random.Random, grey: bool) -> tuple[int, int, int]:
    """Of a dozen random colours (greys for a grey photo), the one farthest from ``mean``."""
    best, best_d = (0, 0, 0), -1.0
    for _ in range(12):  # not quite black or white, so that strokes on it still show
        if grey:
            v = rng.randint(20, 235)
            c = (v, v, v)
        else:
            c = (rng.randint(20, 235), rng.randint(20, 235), rng.randint(20, 235))
        d = float(np.linalg.norm(np.array(c, dtype=np.float32) - mean))
        if d > best_d:
            best, best_d = c, d
    return best


def _grain(patch: Image.Image, rng: random.Random, sigma: float) -> Image.Image:
    """Photographic noise, so that an altered region is not flatter than the rest of the photo."""
    nrng = np.random.default_rng(rng.randrange(2**32))
    arr = np.asarray(patch.convert("RGB"), dtype=np.float32)
    noise = nrng.normal(0, sigma, size=(arr.shape[0], arr.shape[1], 1)).astype(np.float32)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))


def _pattern(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A procedural label or decoration: stripes, checks or rings in two random colours."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(6, 18)
    style = rng.choice(["stripes", "checks", "rings"])
    if style == "stripes":
        a = rng.uniform(0, math.pi)
        t = np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period)
    elif style == "checks":
        t = np.sin(2 * math.pi * xx / period) * np.sin(2 * math.pi * yy / period)
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.sin(2 * math.pi * np.hypot(xx - cx, yy - cy) / period)
    c1 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    c2 = np.array(_far_colour(c1, rng, grey=False), dtype=np.float32)
    b = ((t + 1) / 2)[..., None]
    return _grain(Image.fromarray((c1 * (1 - b) + c2 * b).astype(np.uint8)), rng, 5)


def _label(img: Image.Image, region: tuple[int, int, int, int], box: tuple[int, int, int, int],
           rng: random.Random, donor: Image.Image | None) -> Image.Image:
    """The same place on another object (``donor``'s object scaled to this object's box), or a pattern."""
    rw, rh = region[2] - region[0], region[3] - region[1]
    if donor is None:
        return _pattern((rw, rh), rng)
    dbox, _ = object_box(donor)
    bw, bh = box[2] - box[0], box[3] - box[1]
    scaled = donor.convert("RGB").crop(dbox).resize((bw, bh), Image.Resampling.BICUBIC)
    x0, y0 = region[0] - box[0], region[1] - box[1]
    return scaled.crop((x0, y0, x0 + rw, y0 + rh))


def _repaint(original: Image.Image, shape: np.ndarray, rng: random.Random, grey: bool) -> Image.Image:
    """A colour far from the region's mean, with strokes and blots of nearby colours for texture."""
    arr = np.asarray(original, dtype=np.float32)
    base = np.array(_far_colour(arr[shape].mean(axis=0), rng, grey), dtype=np.int32)
    patch = Image.new("RGB", original.size, tuple(int(v) for v in base))
    draw = ImageDraw.Draw(patch)
    w, h = original.size

    def shade(c: int) -> int:  # 25-70 levels lighter or darker, whichever fits
        off = rng.randint(25, 70) * rng.choice([-1, 1])
        return int(c + off if 0 <= c + off <= 255 else c - off)

    def near() -> tuple[int, int, int]:
        if grey:
            v = shade(int(base[0]))
            return v, v, v
        r, g, b = (shade(int(c)) for c in base)
        return r, g, b

    for _ in range(rng.randint(4, 9)):
        x0, y0 = rng.randint(0, w - 1), rng.randint(0, h - 1)
        x1, y1 = rng.randint(0, w - 1), rng.randint(0, h - 1)
        if rng.random() < 0.6:
            draw.line((x0, y0, x1, y1), fill=near(), width=rng.randint(2, max(3, min(w, h) // 8)))
        else:
            draw.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=near())
    return _grain(patch.filter(ImageFilter.GaussianBlur(0.8)), rng, 4)


def _inscription(original: Image.Image, shape: np.ndarray, rng: random.Random, grey: bool) -> Image.Image:
    """The region's median colour with other letters (one or two lines) in a contrasting colour."""
    arr = np.asarray(original, dtype=np.float32)
    median = np.median(arr[shape], axis=0)
    patch = _grain(Image.new("RGB", original.size, tuple(int(v) for v in median)), rng, 3)
    luminance = float(median @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    ink = median * 0.25 if luminance > 110 else median + (255 - median) * 0.8
    if grey:
        ink = np.full(3, ink.mean(), dtype=np.float32)
    alphabet = "ABCDEFGHIKLMNOPRSTVXYZ0123456789"
    lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 7))) for _ in range(rng.randint(1, 2))]
    text = "\n".join(lines)
    w, h = original.size
    draw = ImageDraw.Draw(patch)
    size = max(8, round(h * 0.8 / len(lines)))
    while True:  # the largest font whose text fits in 85% of the region
        font = _font(size)
        left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, align="center")
        if (right - left <= w * 0.85 and bottom - top <= h * 0.85) or size <= 8:
            break
        size = max(8, round(size * 0.9))
    tw, th = right - left, bottom - top
    x = (w - tw) / 2 - left + rng.uniform(-0.05, 0.05) * w
    y = (h - th) / 2 - top + rng.uniform(-0.05, 0.05) * h
    draw.multiline_text((x, y), text, fill=tuple(int(v) for v in ink), font=font, align="center")
    return patch


def twin_edit(img: Image.Image, rng: random.Random, donor: Image.Image | None = None,
              kind: str | None = None) -> TwinEdit:
    """Alter one region of the object (``kind`` from TWIN_KINDS, chosen by ``rng`` when None); every
    other pixel stays the original's. ``twin`` adds a mild listing condition on top."""
    kind = kind or rng.choice(TWIN_KINDS)
    if kind not in TWIN_KINDS:
        raise ValueError(f"unknown twin kind {kind!r}; one of {TWIN_KINDS}")
    img = img.convert("RGB")
    box, mask = object_box(img)
    region, ellipse = _twin_region(box, mask, rng)
    original = img.crop(region)
    shape = _shape_mask(original.size, ellipse)
    grey = _is_grey(img)
    if kind == "label":
        patch = _label(img, region, box, rng, donor)
    elif kind == "repaint":
        patch = _repaint(original, shape, rng, grey)
    else:
        patch = _inscription(original, shape, rng, grey)
    if grey:
        patch = patch.convert("L").convert("RGB")
    # A soft edge inside the shape (a hard seam would give the twin away), never outside it.
    alpha = Image.fromarray((shape * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    alpha_arr = np.where(shape, np.asarray(alpha), 0).astype(np.uint8)
    out = img.copy()
    out.paste(patch, region[:2], Image.fromarray(alpha_arr))
    return TwinEdit(out, kind, region, ellipse, box)


def _mild_condition(img: Image.Image, rng: random.Random) -> Image.Image:
    """A slight listing condition: re-compression, a small change of light, or both."""
    how = rng.choice(["jpeg", "colour", "both"])
    if how in ("colour", "both"):
        arr = np.asarray(img, dtype=np.float32)
        gain = rng.uniform(0.94, 1.06)
        tint = [1.0, 1.0, 1.0] if _is_grey(img) else [rng.uniform(0.98, 1.02) for _ in range(3)]
        img = Image.fromarray(np.clip(arr * gain * np.array(tint, dtype=np.float32), 0, 255).astype(np.uint8))
    if how in ("jpeg", "both"):
        img = _jpeg(img, rng.randint(80, 92))
    return img


def twin(img: Image.Image, rng: random.Random, donor: Image.Image | None = None,
         kind: str | None = None) -> Image.Image:
    """A near twin of the object: one region (20-35% of the object's box, at least 65% of the object
    left as it is) carries another label (from ``donor``, another object's photo, or a pattern), is
    repainted, or bears another inscription; then a mild listing condition. Never the same object."""
    return _mild_condition(twin_edit(img, rng, donor, kind).image, rng)


# One query per transform and registry photo; `lot` combines two objects and is applied separately.
TRANSFORMS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "crop": crop,
    "rotate": rotate,
    "perspective": perspective,
    "colour": colour_shift,
    "blur": blur,
    "jpeg-q30": jpeg_q30,
    "watermark": watermark,
    "screenshot": screenshot,
    "composite": composite,
    "downscale-300": downscale_300,
}


def write_pack(objects: list[tuple[str, str | None, list[Image.Image]]], out, seed: int = 2026,
               holdout: int = 0, lots: int = 0, transforms: list[str] | None = None, twins: int = 0) -> dict:
    """Write a benchmark pack (``../shared/benchmarks/README.md`` format) from registry objects.

    ``objects``: (object id, title, photos). Every photo of a registered object becomes a reference;
    the first photo of each object gets one query per transform. The last ``holdout`` objects are
    left out of the references, so their queries are open-set (``object_ids: []``). ``lots`` queries
    show two registered objects side by side. ``twins`` registered objects (drawn with the seed) get a
    near twin of their first photo (``twin``, the kinds in turn, another registered object's first
    photo as the label donor): an open-set query (``object_ids: []``, tags ``twin``, ``twin:<kind>``,
    ``unregistered``) whose nearest registered object is its original, ``queries/twin-<object>.jpg``
    beside ``references/<object>-0.jpg``.
    """
    import json
    from pathlib import Path

    out = Path(out)
    (out / "references").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = transforms or list(TRANSFORMS)
    registered = objects[: len(objects) - holdout] if holdout else objects
    refs, queries = [], []
    for n, (object_id, title, photos) in enumerate(objects):
        is_registered = n < len(registered)
        if is_registered:
            for p, photo in enumerate(photos):
                path = f"references/{n:05d}-{p}.jpg"
                photo.convert("RGB").save(out / path, "JPEG", quality=92)
                refs.append({"object_id": object_id, "path": path, "title": title})
        source = _listing_size(photos[0])
        for name in names:
            path = f"queries/{n:05d}-{name}.jpg"
            TRANSFORMS[name](source, rng).convert("RGB").save(out / path, "JPEG", quality=85)
            queries.append({"path": path, "object_ids": [object_id] if is_registered else [],
                            "tags": [f"aug:{name}"] + ([] if is_registered else ["unregistered"])})
    for i in range(min(lots, len(registered) // 2)):
        a, b = rng.sample(range(len(registered)), 2)
        path = f"queries/lot-{i:04d}.jpg"
        lot([_listing_size(registered[a][2][0]), _listing_size(registered[b][2][0])], rng).save(
            out / path, "JPEG", quality=85)
        queries.append({"path": path, "object_ids": [registered[a][0], registered[b][0]], "tags": ["several-objects"]})
    n_twins = min(twins, len(registered))
    for i, n in enumerate(sorted(rng.sample(range(len(registered)), n_twins))):
        others = [m for m in range(len(registered)) if m != n]
        donor = registered[rng.choice(others)][2][0] if others else None
        kind = TWIN_KINDS[i % len(TWIN_KINDS)]
        path = f"queries/twin-{n:05d}.jpg"
        twin(_listing_size(registered[n][2][0]), rng, donor=donor, kind=kind).save(out / path, "JPEG", quality=92)
        queries.append({"path": path, "object_ids": [],
                        "tags": ["twin", f"twin:{kind}", f"twin-of:{registered[n][0]}", "unregistered"]})
    (out / "references.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs), encoding="utf-8")
    (out / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    return {"references": len(refs), "queries": len(queries), "objects": len(objects), "holdout": holdout,
            "twins": n_twins}


# Registry photos go into a pack at most this long: a search decodes photos far smaller than this
# (``decode.working_side``), and a pack of a large registry is built in memory.
PACK_PHOTO_SIDE = 1024


def registry_objects(store: RegistryStore, limit: int | None = None,
                     max_side: int = PACK_PHOTO_SIDE) -> list[tuple[str, str | None, list[Image.Image]]]:
    """The registry's artefacts that have photos, as ``write_pack`` takes them: (object id, title,
    photos), in registry order, at most ``limit``. The object id is the inventory number (with the
    artefact's row id when two institutions use the same number). A photo that cannot be read is
    skipped with a warning; an artefact left with none is skipped."""
    import logging

    from app.core.errors import AppError
    from app.pipeline.decode import decode_image
    from app.registry.store import ArtefactFilter

    log = logging.getLogger(__name__)
    objects: list[tuple[str, str | None, list[Image.Image]]] = []
    seen: set[str] = set()
    offset = 0
    while True:
        page, total = store.list_artefacts(ArtefactFilter(), offset, 200)
        for a in page:
            photos = []
            for p in a.photos:
                try:
                    img = decode_image(store.photos.read(p.sha256, p.format), min_side=max_side).image
                except (OSError, AppError) as exc:
                    log.warning("Photo %s of artefact %s cannot be read (%s): skipped.", p.id,
                                a.inventory_number, getattr(exc, "message", None) or exc)
                    continue
                if max(img.size) > max_side:
                    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                photos.append(img)
            if not photos:
                continue
            object_id = a.inventory_number if a.inventory_number not in seen else f"{a.inventory_number}#{a.id}"
            seen.add(object_id)
            objects.append((object_id, a.title, photos))
            if limit and len(objects) >= limit:
                return objects
        offset += len(page)
        if not page or offset >= total:
            return objects
