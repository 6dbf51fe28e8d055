"""Scan plumbing without a model: safe paths, archives, fetching, checkpoint files, grouping."""

from __future__ import annotations

import http.server
import json
import os
import threading
import zipfile

import pytest

from app.jobs.scan.checkpoint import Checkpoint, GroupStats, open_append
from app.jobs.scan.fetch import FetchPolicy, fetch
from app.jobs.scan.outputs import matches_csv
from app.jobs.scan.reader import DumpError, Listing, RowError, open_dump
from app.jobs.scan.sources import FolderSource, ImageUnavailable, ZipSource, safe_name
from app.jobs.scan.work import DecodeConfig, decode_ref, groups


@pytest.mark.parametrize("ref", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "C:\\x.jpg", "..\\x.jpg", "a\x00.jpg", ""])
def test_paths_that_leave_the_dump_are_refused(ref):
    with pytest.raises(ImageUnavailable):
        safe_name(ref)


def test_safe_names_are_normalised():
    assert safe_name("img\\a.jpg") == "img/a.jpg"
    assert safe_name("./img/../img/a.jpg") == "img/a.jpg"
    assert safe_name("../b.jpg", base="sub") == "b.jpg"


def test_folder_source_refuses_symlinks_out_and_large_files(tmp_path):
    (tmp_path / "dump").mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    (tmp_path / "dump" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (tmp_path / "dump" / "big.jpg").write_bytes(b"x" * 2048)
    (tmp_path / "dump" / "ok.jpg").write_bytes(b"fine")
    src = FolderSource(tmp_path / "dump", max_bytes=1024)
    assert src.read("ok.jpg") == b"fine"
    with pytest.raises(ImageUnavailable, match="leaves"):
        src.read("link.jpg")
    with pytest.raises(ImageUnavailable, match="larger than"):
        src.read("big.jpg")
    with pytest.raises(ImageUnavailable, match="not found"):
        src.read("none.jpg")


def test_zip_members_with_unsafe_names_are_never_read(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../evil.jpg", b"evil")
        zf.writestr("good.jpg", b"good")
    src = ZipSource(path, "", max_bytes=1024)
    assert src.read("good.jpg") == b"good"
    for ref in ("../evil.jpg", "evil.jpg"):
        with pytest.raises(ImageUnavailable):
            src.read(ref)
    dump = open_dump(path, 1024)  # a zip of photos: the unsafe member is reported, never read
    items = list(dump.items())
    assert [it.listing_id for it in items if isinstance(it, Listing)] == ["good.jpg"]
    assert [(e.where, "not read" in e.reason) for e in items if isinstance(e, RowError)] == [("../evil.jpg", True)]


def test_tar_photos_that_are_links_or_leave_the_archive_are_reported(tmp_path):
    import io
    import tarfile

    path = tmp_path / "d.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("good.jpg", "/abs.jpg", "../up.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))
        link = tarfile.TarInfo("link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
        notes = tarfile.TarInfo("notes.txt")
        notes.size = 1
        tar.addfile(notes, io.BytesIO(b"x"))
    items = list(open_dump(path, 1024).items())
    assert [it.listing_id for it in items if isinstance(it, Listing)] == ["good.jpg"]
    assert sorted(e.where for e in items if isinstance(e, RowError)) == ["../up.jpg", "/abs.jpg", "link.jpg"]
    assert [it.seq for it in items] == [0, 1, 2, 3]


def test_two_manifests_in_one_archive_are_refused(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.jsonl", "")
        zf.writestr("b.csv", "")
    with pytest.raises(DumpError, match="several listing files"):
        open_dump(path, 1024)
    with pytest.raises(DumpError, match="give a .jsonl"):
        (tmp_path / "x.txt").write_text("")
        open_dump(tmp_path / "x.txt", 1024)


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self):
        _Handler.hits[self.path] = _Handler.hits.get(self.path, 0) + 1
        if self.path == "/ok.jpg":
            self._send(200, b"photo")
        elif self.path == "/flaky.jpg" and _Handler.hits[self.path] < 3:
            self._send(503, b"busy")
        elif self.path == "/flaky.jpg":
            self._send(200, b"late photo")
        elif self.path == "/big.jpg":
            self._send(200, b"x" * 5000)
        elif self.path == "/to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        else:
            self._send(404, b"no")

    def _send(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_base():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.hits = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_retries_caps_and_refuses(http_base):
    # The server is on loopback: allowed here (the address check has its own tests).
    policy = FetchPolicy(enabled=True, timeout_s=5, max_bytes=1000, retries=2, backoff_s=0.01, allow_private=True)
    assert fetch(f"{http_base}/ok.jpg", policy) == b"photo"
    assert fetch(f"{http_base}/flaky.jpg", policy) == b"late photo" and _Handler.hits["/flaky.jpg"] == 3
    with pytest.raises(ImageUnavailable, match="HTTP 404"):
        fetch(f"{http_base}/gone.jpg", policy)
    assert _Handler.hits["/gone.jpg"] == 1  # a 404 is not retried
    with pytest.raises(ImageUnavailable, match="larger than"):
        fetch(f"{http_base}/big.jpg", policy)
    with pytest.raises(ImageUnavailable, match="only http and https"):
        fetch(f"{http_base}/to-file", policy)
    with pytest.raises(ImageUnavailable, match="--fetch"):
        fetch(f"{http_base}/ok.jpg", FetchPolicy(enabled=False))


def test_other_url_schemes_are_refused_before_any_read(tmp_path):
    cfg = DecodeConfig(max_pixels=10**8, min_side=448, fetch=FetchPolicy(enabled=True))
    for ref in ("file:///etc/passwd", "ftp://host/a.jpg", "data:image/png;base64,AAAA"):
        image, error = decode_ref(FolderSource(tmp_path, 1024), ref, cfg)
        assert image is None and "only relative paths" in error


def test_torn_lines_are_cut_before_appending_and_ignored_when_reading(tmp_path):
    cp = Checkpoint(tmp_path)
    cp.record([GroupStats(0, listings=16, images=20)])
    cp.close()
    with open(tmp_path / "scan-done.log", "a") as f:
        f.write('{"group": 1, "listi')  # a kill in the middle of a write
    assert list(cp.done()) == [0]
    cp.record([GroupStats(2, listings=3)])
    cp.close()
    assert list(cp.done()) == [0, 2]
    path = tmp_path / "x.jsonl"
    path.write_text("whole\nto")
    open_append(path).close()
    assert path.read_text() == "whole\n"


def test_groups_are_cut_at_fixed_positions_and_skip_finished_ones():
    items = [Listing(i, str(i), {}, ("a.jpg",), "") if i != 5 else RowError(i, "line 6", "bad") for i in range(10)]
    got = [(g.number, [it.seq for it in g.items]) for g in groups(items, 4, done={1})]
    assert got == [(0, [0, 1, 2, 3]), (2, [8, 9])]


def test_csv_cells_cannot_become_spreadsheet_formulas():
    row = {"listing_id": "=HYPERLINK(\"http://x\")", "image": "a.jpg", "artefact_id": 1, "inventory_number": "I",
           "institution": "", "artefact_title": None, "score": 0.5, "verdict": "possible", "registry_photo_id": 2,
           "region": None, "listing": {"title": "+1"}, "image_sha256": "ab"}
    text = matches_csv([row])
    assert "'=HYPERLINK" in text and ',"\'+1",' in text


def _items(text: str, kind: str):
    import io

    from app.jobs.scan.reader import parse_manifest

    return list(parse_manifest(io.BytesIO(text.encode()), kind))


def test_hostile_jsonl_lines_become_row_errors_and_the_dump_goes_on():
    lines = ['{"listing_id": "L1", "images": ["a.jpg"]}',
             '{"listing_id": "L2", "price": ' + "1" * 5000 + ', "images": ["b.jpg"]}',
             "[" * 100_000,
             '{"listing_id": "L4", "images": []}',
             '{"listing_id": "L5"}',
             '{"listing_id": "L6", "title": "Jarre d\ufffdcor\ufffde", "images": ["c.jpg"]}',
             '{"listing_id": "L7", "images": ["d.jpg"]}']
    items = _items("\n".join(lines) + "\n", "jsonl")
    assert [type(i).__name__ for i in items] == ["Listing"] + ["RowError"] * 5 + ["Listing"]
    reasons = [i.reason for i in items if isinstance(i, RowError)]
    assert "not valid JSON" in reasons[0] and "nested too deeply" in reasons[1]
    assert "no photos" in reasons[2] and "no photos" in reasons[3] and "UTF-8" in reasons[4]


def test_csv_dumps_as_spreadsheets_write_them():
    long_text = "x" * 200_000
    text = (" Listing_ID , Title ,Images\n"
            "L1,Ewer,a.jpg\n"
            f'L2,"{long_text}",b.jpg|c.jpg\n'
            "L3,Lamp,\n"
            "L4,Caf\ufffd,d.jpg\n"
            'L5,"two\nlines",e.jpg\n'
            "L6,Coin,f.jpg\n")
    items = _items(text, "csv")
    kinds = [(type(i).__name__, getattr(i, "listing_id", None) or i.reason[:20]) for i in items]
    assert [k for k, _ in kinds] == ["Listing", "Listing", "RowError", "RowError", "Listing", "Listing"], kinds
    by_id = {i.listing_id: i for i in items if isinstance(i, Listing)}
    assert by_id["L1"].images == ("a.jpg",) and by_id["L1"].fields["title"] == "Ewer"
    assert by_id["L2"].images == ("b.jpg", "c.jpg") and len(by_id["L2"].fields["title"]) == 20_000
    assert by_id["L5"].where == "lines 6-7" and by_id["L6"].where == "line 8"
    errors = [i for i in items if isinstance(i, RowError)]
    assert errors[0].where == "line 4" and "no photos" in errors[0].reason and "UTF-8" in errors[1].reason


def test_a_csv_row_that_cannot_be_read_is_skipped_and_the_rest_read(monkeypatch):
    import csv

    from app.jobs.scan import reader

    before = csv.field_size_limit()
    monkeypatch.setattr(reader, "CSV_CELL_LIMIT", 10)  # as if a cell were over the limit
    csv.field_size_limit(10)
    try:
        items = _items("listing_id,images\nL1,a.jpg\nL2," + "b" * 50 + ".jpg\nL3,c.jpg\n", "csv")
    finally:
        csv.field_size_limit(before)
    assert [getattr(i, "listing_id", None) for i in items] == ["L1", None, "L3"]
    assert items[1].where == "line 3" and "cannot be read" in items[1].reason


def test_names_that_are_not_utf8_are_written_not_fatal(tmp_path):
    from app.jobs.scan.outputs import _utf8
    from app.jobs.scan.reader import open_dump

    folder = tmp_path / "dump"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(b"x")
    open(os.fsencode(folder) + b"/caf\xe9.jpg", "wb").write(b"y")
    dump = open_dump(folder, 1024)
    names = [i.listing_id for i in dump.items()]
    assert "caf\udce9.jpg" in names and dump.identity()
    assert _utf8(json.dumps({"image": names[0]}, ensure_ascii=False)) == b'{"image": "caf\\udce9.jpg"}'
    with open_append(tmp_path / "rows.jsonl") as f:
        f.write(names[0] + "\n")
    assert (tmp_path / "rows.jsonl").read_bytes() == b"caf\\udce9.jpg\n"
