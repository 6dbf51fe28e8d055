"""Object proposals (``app.pipeline.regions``)."""

from __future__ import annotations

from PIL import Image

from app.pipeline.regions import propose_regions, tight_box
from tests.unit.pipeline.pictures import textured


def two_objects_on_a_table():
    canvas = Image.new("RGB", (1000, 500), (235, 230, 220))
    canvas.paste(textured(11, size=(300, 300)), (60, 100))
    canvas.paste(textured(12, size=(280, 260)), (620, 140))
    return canvas


def test_proposals_find_each_object_of_a_lot():
    boxes = propose_regions(two_objects_on_a_table())
    centres = [((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2) for b in boxes]
    assert any(abs(cx - 210) < 60 and abs(cy - 250) < 60 for cx, cy in centres), boxes
    assert any(abs(cx - 760) < 60 and abs(cy - 270) < 60 for cx, cy in centres), boxes


def test_tight_box_of_an_object_on_a_plain_backdrop():
    canvas = Image.new("RGB", (800, 600), (20, 20, 20))
    canvas.paste(textured(13, size=(300, 240)), (250, 200))
    box = tight_box(canvas)
    assert box is not None
    assert abs(box.x0 - 250) < 30 and abs(box.y0 - 200) < 30 and abs(box.x1 - 550) < 30 and abs(box.y1 - 440) < 30


def test_proposals_do_not_depend_on_what_was_searched_before():
    photo = two_objects_on_a_table()
    first = propose_regions(photo)
    for seed in range(3):
        propose_regions(textured(seed))
    assert propose_regions(photo) == first
