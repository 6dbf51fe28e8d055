"""The listing-transforms pack generator: seeded, valid pack format, open-set, lot and twin queries."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.jobs.listing_transforms import (
    TRANSFORMS,
    TWIN_KINDS,
    lot,
    object_box,
    twin,
    twin_edit,
    write_pack,
)
from tests.conftest import random_photo

ROOT = Path(__file__).resolve().parents[2]


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
    assert summary == {"references": 6, "queries": 5 * len(TRANSFORMS) + 1, "objects": 5, "holdout": 2, "twins": 0}
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


# --- twins ------------------------------------------------------------------------------------------


def object_on_table(seed: int, size=(400, 300), box=(90, 60, 330, 250)) -> Image.Image:
    """A textured object (an ellipse filling ``box``) on a plain dark table: the shape of a coin photo."""
    photo = Image.new("RGB", size, (30, 30, 30))
    inside = random_photo(seed, size=(box[2] - box[0], box[3] - box[1]))
    alpha = Image.new("L", inside.size, 0)
    ImageDraw.Draw(alpha).ellipse((0, 0, inside.width - 1, inside.height - 1), fill=255)
    photo.paste(inside, box[:2], alpha)
    return photo


def shape_of(edit, size) -> np.ndarray:
    x0, y0, x1, y1 = edit.region
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    if edit.ellipse:
        w, h = x1 - x0, y1 - y0
        inside &= ((xx + 0.5 - x0 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - y0 - h / 2) / (h / 2)) ** 2 <= 1
    return inside


def test_object_box_finds_the_object_or_falls_back_to_the_centre():
    box, mask = object_box(object_on_table(1))
    assert all(abs(a - b) <= 6 for a, b in zip(box, (90, 60, 330, 250))), box
    assert 0.6 < mask[60:250, 90:330].mean() <= 1 and not mask[:50].any()
    box, _ = object_box(Image.new("RGB", (200, 100), (120, 130, 140)))
    assert box == (20, 10, 180, 90)


@pytest.mark.parametrize("kind", TWIN_KINDS)
def test_twin_is_seeded_and_leaves_the_original_around_the_altered_region(kind):
    donor = object_on_table(99)
    for seed in range(6):
        photo = object_on_table(seed)
        a = twin(photo, random.Random(seed), donor=donor, kind=kind)
        b = twin(photo, random.Random(seed), donor=donor, kind=kind)
        assert a.size == photo.size and a.mode == "RGB"
        assert np.array_equal(np.asarray(a), np.asarray(b)), "same seed, same twin"

        edit = twin_edit(photo, random.Random(seed), donor=donor, kind=kind)
        assert edit.kind == kind
        bx0, by0, bx1, by1 = edit.box
        rx0, ry0, rx1, ry1 = edit.region
        assert bx0 <= rx0 < rx1 <= bx1 and by0 <= ry0 < ry1 <= by1, "the region lies inside the object's box"
        shape = shape_of(edit, photo.size)
        box_area = (bx1 - bx0) * (by1 - by0)
        assert 0.15 <= shape.sum() / box_area <= 0.40
        diff = np.abs(np.asarray(edit.image, dtype=np.int16) - np.asarray(photo, dtype=np.int16)).max(axis=2)
        assert not diff[~shape].any(), "every pixel outside the altered shape is the original's"
        changed = diff > 0
        assert 0.10 <= changed.sum() / box_area <= 0.40
        _, mask = object_box(photo)
        assert (changed & mask).sum() <= 0.36 * mask.sum(), "at least 65% of the object is unchanged"
        assert diff[shape].mean() > 30, "the altered region clearly differs"

        # The listed twin: the same edit under a mild listing condition (slight JPEG or light change).
        listed = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(photo, dtype=np.int16)).max(axis=2)
        assert listed[~shape].mean() < 12 and listed[shape].mean() > 3 * listed[~shape].mean()


def test_twin_without_a_donor_and_on_a_photo_filled_by_the_object():
    for seed in range(4):
        photo = random_photo(seed, size=(400, 300))
        edit = twin_edit(photo, random.Random(seed), kind="label")
        shape = shape_of(edit, photo.size)
        diff = np.abs(np.asarray(edit.image, dtype=np.int16) - np.asarray(photo, dtype=np.int16)).max(axis=2)
        assert not diff[~shape].any() and diff[shape].mean() > 30
        assert min(twin(photo, random.Random(seed)).size) == 300


def test_twin_picks_every_kind_with_its_rng():
    kinds = {twin_edit(object_on_table(1), random.Random(seed)).kind for seed in range(20)}
    assert kinds == set(TWIN_KINDS)
    with pytest.raises(ValueError):
        twin_edit(object_on_table(1), random.Random(0), kind="forgery")


def test_twin_of_a_grey_photo_stays_grey():
    photo = object_on_table(2).convert("L").convert("RGB")
    for kind in TWIN_KINDS:
        arr = np.asarray(twin_edit(photo, random.Random(3), donor=object_on_table(5), kind=kind).image, dtype=np.int16)
        assert np.abs(arr - arr.mean(axis=2, keepdims=True)).max() <= 1


def test_write_pack_adds_twins_as_open_set_queries(tmp_path):
    small = {"size": (200, 150), "box": (45, 30, 165, 125)}  # listing size makes their twins 320 x 240
    objects = [(f"OBJ-{i}", f"object {i}", [object_on_table(i, **small)]) for i in range(6)]
    summary = write_pack(objects, tmp_path / "pack", seed=3, holdout=1, transforms=["crop"], twins=4)
    assert summary == {"references": 5, "queries": 6 + 4, "objects": 6, "holdout": 1, "twins": 4}
    queries = [json.loads(line) for line in (tmp_path / "pack" / "queries.jsonl").read_text().splitlines()]
    twins = [q for q in queries if "twin" in q["tags"]]
    assert len(twins) == 4 and all(q["object_ids"] == [] for q in twins)
    assert {t for q in twins for t in q["tags"] if t.startswith("twin:")} == {f"twin:{k}" for k in TWIN_KINDS}
    for q in twins:
        kind = next(t for t in q["tags"] if t.startswith("twin:"))
        n = int(q["path"].removeprefix("queries/twin-").removesuffix(".jpg"))
        assert n < 5, "twins are of registered objects"
        # The object a twin was made from: calibration keeps the two in one fold.
        assert q["tags"] == ["twin", kind, f"twin-of:{objects[n][0]}", "unregistered"]
        with Image.open(tmp_path / "pack" / q["path"]) as img:
            assert img.size == (320, 240)
    again = write_pack(objects, tmp_path / "again", seed=3, holdout=1, transforms=["crop"], twins=4)
    assert again == summary
    for q in twins:
        assert (tmp_path / "again" / q["path"]).read_bytes() == (tmp_path / "pack" / q["path"]).read_bytes()
    # No more twins than registered objects; none by default, and then the pack is the one without twins.
    assert write_pack(objects, tmp_path / "many", seed=3, holdout=1, transforms=["crop"], twins=50)["twins"] == 5
    write_pack(objects, tmp_path / "none", seed=3, holdout=1, transforms=["crop"])
    assert ((tmp_path / "none" / "queries.jsonl").read_text()
            == "".join(line + "\n" for line in (tmp_path / "pack" / "queries.jsonl").read_text().splitlines()
                       if '"twin"' not in line))


def test_make_listing_pack_script_adds_twins(tmp_path):
    out = tmp_path / "coins"
    run = subprocess.run([sys.executable, "-m", "scripts.make_listing_pack", "--demo-coins", str(out),
                          "--holdout", "8", "--twins", "5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["twins"] == 5 and summary["holdout"] == 8
    queries = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    twins = [q for q in queries if "twin" in q["tags"]]
    assert len(twins) == 5 and all(q["object_ids"] == [] and "unregistered" in q["tags"] for q in twins)
    assert all((out / q["path"]).is_file() for q in twins)


def test_registry_objects_skips_photos_that_cannot_be_read(service, caplog, tmp_path):
    """A pack is made from whatever photos can be read: a missing or damaged file is said and skipped."""
    from app.jobs.listing_transforms import registry_objects
    from app.service import PhotoInput
    from tests.conftest import jpeg_bytes

    big = random_photo(7, size=(2400, 1600))
    a1 = service.register_artefact({"inventory_number": "A-1", "title": "two photos"},
                                   [PhotoInput(jpeg_bytes(random_photo(1))), PhotoInput(jpeg_bytes(big))])
    a2 = service.register_artefact({"inventory_number": "A-2"}, [PhotoInput(jpeg_bytes(random_photo(2)))])
    service.register_artefact({"inventory_number": "A-3"}, [PhotoInput(jpeg_bytes(random_photo(3)))])
    service.register_artefact({"inventory_number": "A-4"}, [])  # no photo: not an object of a pack
    store = service.store
    first = min(store.get_artefact(a1.id).photos, key=lambda p: p.id)
    store.photos.path_for(first.sha256, first.format).write_bytes(b"not a photo any more")
    gone = store.get_artefact(a2.id).photos[0]
    store.photos.path_for(gone.sha256, gone.format).unlink()

    objects = registry_objects(store)
    assert [(object_id, title, len(photos)) for object_id, title, photos in objects] == [
        ("A-1", "two photos", 1), ("A-3", None, 1)]
    assert max(objects[0][2][0].size) == 1024  # photos are brought down to the size a pack needs
    assert caplog.text.count("cannot be read") == 2 and "A-2" in caplog.text
    assert [o[0] for o in registry_objects(store, limit=1)] == ["A-1"]
    write_pack(objects, tmp_path / "pack", holdout=1)  # what it returns is what write_pack takes
