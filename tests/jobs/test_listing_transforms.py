"""The listing-transforms pack generator: seeded, valid pack format, open-set and lot queries."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from app.jobs.listing_transforms import TRANSFORMS, lot, write_pack
from tests.conftest import random_photo


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_transform_is_seeded_and_changes_the_photo(name):
    photo = random_photo(3, size=(400, 300))
    a = TRANSFORMS[name](photo, random.Random(5))
    b = TRANSFORMS[name](photo, random.Random(5))
    assert a.mode == "RGB" and min(a.size) > 16
    assert np.array_equal(np.asarray(a), np.asarray(b)), "same seed, same picture"
    if a.size == photo.size:
        assert not np.array_equal(np.asarray(a), np.asarray(photo.convert("RGB")))


def test_downscale_caps_the_long_side_at_300():
    assert max(TRANSFORMS["downscale-300"](random_photo(1, size=(1200, 900)), random.Random(0)).size) == 300


def test_lot_puts_every_object_in_one_wider_photo():
    photos = [random_photo(1), random_photo(2)]
    out = lot(photos, random.Random(0))
    assert out.width > sum(p.width for p in photos) * out.height / photos[0].height / 2


def test_write_pack_holds_out_objects_and_adds_lots(tmp_path):
    objects = [(f"OBJ-{i}", f"object {i}", [random_photo(i), random_photo(100 + i)]) for i in range(5)]
    summary = write_pack(objects, tmp_path / "pack", seed=1, holdout=2, lots=1)
    refs = [json.loads(line) for line in (tmp_path / "pack" / "references.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (tmp_path / "pack" / "queries.jsonl").read_text().splitlines()]
    assert summary == {"references": 6, "queries": 5 * len(TRANSFORMS) + 1, "objects": 5, "holdout": 2}
    assert {r["object_id"] for r in refs} == {"OBJ-0", "OBJ-1", "OBJ-2"}
    held = [q for q in queries if "unregistered" in q["tags"]]
    assert len(held) == 2 * len(TRANSFORMS) and all(q["object_ids"] == [] for q in held)
    lots = [q for q in queries if "several-objects" in q["tags"]]
    assert len(lots) == 1 and len(lots[0]["object_ids"]) == 2
    assert set(lots[0]["object_ids"]) <= {"OBJ-0", "OBJ-1", "OBJ-2"}
    for row in refs + queries:
        with Image.open(tmp_path / "pack" / row["path"]) as img:
            img.verify()
    again = write_pack(objects, tmp_path / "again", seed=1, holdout=2, lots=1)
    assert again == summary
    assert ((tmp_path / "again" / queries[7]["path"]).read_bytes()
            == (tmp_path / "pack" / queries[7]["path"]).read_bytes())
