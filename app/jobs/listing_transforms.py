"""What happens to a registry photo on its way into a sale listing, as seeded, repeatable transforms.

Auction houses and marketplace sellers crop, rotate, re-light, re-compress, watermark and
screenshot photos, and photograph objects on their own tables or together in one lot. A "listing
transforms" pack applies each of these to registry photos so same-object matching can be measured
on any registry (``scripts/make_listing_pack.py``).
"""

from __future__ import annotations

import io
import random
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

LISTING_MIN_SIDE = 320


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
               holdout: int = 0, lots: int = 0, transforms: list[str] | None = None) -> dict:
    """Write a benchmark pack (``../shared/benchmarks/README.md`` format) from registry objects.

    ``objects``: (object id, title, photos). Every photo of a registered object becomes a reference;
    the first photo of each object gets one query per transform. The last ``holdout`` objects are
    left out of the references, so their queries are open-set (``object_ids: []``). ``lots`` queries
    show two registered objects side by side.
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
    (out / "references.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs), encoding="utf-8")
    (out / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    return {"references": len(refs), "queries": len(queries), "objects": len(objects), "holdout": holdout}
