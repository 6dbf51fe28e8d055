"""The demo registry: the 24 Greek coins from Pompeii in scikit-image's public-domain ``coins``
photograph (Brooklyn Museum), each cropped as its own artefact."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.registry.models import ArtefactStatus
from app.service import MatchingService, PhotoInput

DEMO_INSTITUTION = "heritage-match demo registry"
MARGIN = 4
_STATUSES = [s.value for s in ArtefactStatus]


@dataclass(frozen=True)
class Coin:
    number: int  # 1..24, row by row
    row: int
    col: int
    bbox: tuple[int, int, int, int]  # left, top, right, bottom in the source photograph
    image: Image.Image

    @property
    def inventory_number(self) -> str:
        return f"DEMO-COIN-{self.number:02d}"


def coin_crops() -> list[Coin]:
    """Find the coins by watershed on the gradient (scikit-image's own coins example)."""
    from scipy import ndimage as ndi
    from skimage import data, filters, measure, segmentation

    photo = data.coins()
    markers = np.zeros_like(photo)
    markers[photo < 30] = 1  # background
    markers[photo > 150] = 2  # coin
    mask = ndi.binary_fill_holes(segmentation.watershed(filters.sobel(photo), markers) - 1)
    regions = [r for r in measure.regionprops(measure.label(mask)) if r.area > 300]
    if len(regions) != 24:
        raise RuntimeError(f"expected 24 coins in the demo photograph, found {len(regions)}")
    rows = sorted(regions, key=lambda r: r.centroid[0])
    coins: list[Coin] = []
    h, w = photo.shape
    for row in range(4):
        for col, r in enumerate(sorted(rows[row * 6 : row * 6 + 6], key=lambda r: r.centroid[1])):
            top, left, bottom, right = r.bbox
            box = (max(0, left - MARGIN), max(0, top - MARGIN), min(w, right + MARGIN), min(h, bottom + MARGIN))
            crop = Image.fromarray(photo[box[1] : box[3], box[0] : box[2]]).convert("RGB")
            coins.append(Coin(len(coins) + 1, row + 1, col + 1, box, crop))
    return coins


def coin_record(coin: Coin) -> dict:
    return {
        "inventory_number": coin.inventory_number,
        "institution": DEMO_INSTITUTION,
        "status": _STATUSES[(coin.number - 1) % len(_STATUSES)],
        "title": f"Greek coin from Pompeii, no. {coin.number}",
        "category": "Numismatics",
        "object_type": "Coin",
        "materials": "Metal",
        "techniques": "Struck",
        "date_period": "Greek, before 79 CE",
        "find_site": "Pompeii",
        "inscriptions": "See photograph",
        "distinguishing_features": f"Row {coin.row}, position {coin.col} of the Brooklyn Museum coins photograph",
        "description": "Demo record built from scikit-image's public-domain `coins` photograph "
        "(Greek coins from Pompeii, Brooklyn Museum). Not a real case.",
        "source_reference": "scikit-image data.coins(); Brooklyn Museum, public domain",
    }


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def seed_demo(service: MatchingService, if_empty: bool = False) -> int:
    """Register the 24 demo coins; returns how many were added (0 if present or registry non-empty)."""
    if if_empty and service.store.count_artefacts() > 0:
        return 0
    added = 0
    for coin in coin_crops():
        if service.store.find_artefact(DEMO_INSTITUTION, coin.inventory_number) is not None:
            continue
        photo = PhotoInput(png_bytes(coin.image), view="obverse", label=coin.inventory_number)
        service.register_artefact(coin_record(coin), [photo])
        added += 1
    return added
