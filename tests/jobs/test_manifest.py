"""Registry import and export (JSONL and CSV)."""

from __future__ import annotations

import csv
import json

import pytest

from app.jobs.manifest import export_manifest, import_manifest
from tests.conftest import jpeg_bytes, png_bytes, random_photo

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases


def write_photos(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"p{i}.jpg").write_bytes(jpeg_bytes(random_photo(100 + i)))


def test_jsonl_import_reports_bad_rows_and_is_idempotent(tmp_path, service):
    write_photos(tmp_path / "img", 4)
    (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    rows = [
        {"inventory_number": "GZ-1", "institution": "Pasha's Palace", "title": "Amphora", "status": "looted",
         "height": 52, "dimension_unit": "cm", "photos": ["img/p0.jpg", "img/p1.jpg"]},
        {"inventory_number": "GZ-2", "photos": [{"path": "img/p2.jpg", "view": "back"}]},
        {"title": "no inventory number", "photos": ["img/p3.jpg"]},
        "not an object",
        {"inventory_number": "GZ-3", "photos": ["img/missing.jpg"]},
        {"inventory_number": "GZ-4", "photos": ["img/broken.jpg"]},
        {"inventory_number": "GZ-5", "status": "sold", "photos": ["img/p3.jpg"]},
        {"inventory_number": "GZ-6", "photos": []},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n")

    report = import_manifest(service, manifest)
    assert report.created == 2 and report.photos_added == 3
    lines = {e.line: e.message for e in report.errors}
    assert set(lines) == {3, 4, 5, 6, 7, 8, 9}
    assert "inventory_number" in lines[3] and "photo not found" in lines[5]
    assert "damaged" in lines[6] or "not an image" in lines[6]
    assert "status" in lines[7] and "photos" in lines[8] and "JSON" in lines[9]
    assert service.index.count == 3
    first = service.store.find_artefact("Pasha's Palace", "GZ-1")
    assert first.height == 52 and len(first.photos) == 2

    again = import_manifest(service, manifest)
    assert again.created == 0 and again.updated == 0 and again.unchanged == 2 and again.photos_added == 0
    assert service.store.count_artefacts() == 2 and service.index.count == 3


def test_csv_import_with_pipe_separated_photos_and_updates(tmp_path, service):
    write_photos(tmp_path, 3)
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["inventory_number", "institution", "title", "diameter", "photos"])
        w.writerow(["C-1", "Museum", "Coin", "1.9", "p0.jpg|p1.jpg"])
        w.writerow(["", "Museum", "no number", "", "p2.jpg"])
    report = import_manifest(service, manifest)
    assert report.created == 1 and [e.line for e in report.errors] == [3]
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["inventory_number", "institution", "title", "photos"])
        w.writerow(["C-1", "Museum", "Silver coin", "p0.jpg|p1.jpg|p2.jpg"])
    report = import_manifest(service, manifest)
    assert report.updated == 1 and report.photos_added == 1
    art = service.store.find_artefact("Museum", "C-1")
    assert art.title == "Silver coin" and art.diameter == 1.9 and len(art.photos) == 3


def test_export_then_import_into_an_empty_registry_gives_the_same_registry(tmp_path, service, settings, encoder,
                                                                          other_database):
    from app.service import MatchingService, PhotoInput

    service.register_artefact({"inventory_number": "E-1", "institution": "I", "title": "Jar", "weight": 1.5,
                               "weight_unit": "kg", "date_reported": "2026-03-01", "status": "stolen"},
                              [PhotoInput(png_bytes(random_photo(1)), view="front"),
                               PhotoInput(jpeg_bytes(random_photo(2)))])
    for fmt in ("jsonl", "csv"):
        out = tmp_path / fmt / f"export.{fmt}"
        out.parent.mkdir()
        assert export_manifest(service, out) == 1
        other = MatchingService(settings.model_copy(update={"data_dir": tmp_path / f"new-{fmt}",
                                                            "database_url": other_database()}),
                                encoder=encoder).start()
        report = import_manifest(other, out)
        assert report.created == 1 and not report.errors
        a, b = service.store.find_artefact("I", "E-1"), other.store.find_artefact("I", "E-1")
        for field in ("title", "weight", "weight_unit", "date_reported", "status"):
            assert getattr(a, field) == getattr(b, field)
        assert sorted(p.sha256 for p in a.photos) == sorted(p.sha256 for p in b.photos)
        other.close()


def test_csv_row_with_more_cells_than_the_header_is_refused_not_cut_short(tmp_path, service):
    write_photos(tmp_path, 2)
    manifest = tmp_path / "m.csv"
    manifest.write_text("inventory_number,photos,title,description\n"
                        "A-1,p0.jpg,Bronze ewer,handle missing, dent on rim\n"
                        'A-2,p1.jpg,Bronze ewer,"handle missing, dent on rim"\n')
    report = import_manifest(service, manifest)
    assert report.created == 1 and [e.line for e in report.errors] == [2]
    assert "5 cells" in report.errors[0].message and "4 columns" in report.errors[0].message
    assert service.store.find_artefact("", "A-1") is None
    assert service.store.find_artefact("", "A-2").description == "handle missing, dent on rim"


def test_a_manifest_that_is_not_utf8_is_refused_whole_with_its_line(tmp_path, service):
    import pytest

    from app.jobs.manifest import ManifestUnreadable, read_rows

    write_photos(tmp_path, 2)
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("inventory_number,photos,title\nL-1,p0.jpg,Ewer\nL-2,p1.jpg,Jarre décorée\n".encode("latin-1"))
    with pytest.raises(ManifestUnreadable) as err:
        import_manifest(service, manifest)
    assert "UTF-8" in err.value.message and "line 3" in err.value.message and "0xe9" in err.value.message
    assert service.store.count_artefacts() == 0  # nothing imported, not even the good first row
    with pytest.raises(ManifestUnreadable):
        list(read_rows(tmp_path / "m.csv"))


def test_cli_import_of_a_latin1_manifest_says_what_to_do(tmp_path, settings, db_env):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    manifest = tmp_path / "m.jsonl"
    line = '{"inventory_number": "L-1", "title": "Jarre décorée", "photos": ["p.jpg"]}\n'
    manifest.write_bytes(line.encode("cp1252"))
    env = {**os.environ, "HM_DATA_DIR": str(settings.data_dir), "HM_MODEL": "efficientnet-lite0", **db_env}
    run = subprocess.run([sys.executable, "-m", "app.cli", "registry", "import", str(manifest)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    said = " ".join((run.stderr + run.stdout).split())
    assert run.returncode == 1 and "Traceback" not in said
    assert "not UTF-8" in said and "line 1" in said and "Nothing was imported" in said


def test_hostile_jsonl_manifest_lines_are_row_errors(tmp_path, service):
    write_photos(tmp_path, 1)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"inventory_number": "H-1", "height": ' + "9" * 5000 + ', "photos": ["p0.jpg"]}\n'
                        + "[" * 100_000 + "\n"
                        + '{"inventory_number": "H-2", "photos": ["p0.jpg"]}\n')
    report = import_manifest(service, manifest)
    assert report.created == 1 and [e.line for e in report.errors] == [1, 2]
    assert all("not valid JSON" in e.message for e in report.errors)
