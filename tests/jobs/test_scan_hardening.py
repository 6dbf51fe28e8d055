"""Scan hardening (issue 18, items 3-8): bounded dump lines, a cap on photos per listing, a fetcher that
refuses internal addresses and keeps to a deadline, CSV cells no separator can turn into formulas, and
bidirectional controls made visible in what people read."""

from __future__ import annotations

import csv
import http.server
import io
import ipaddress
import json
import socket
import threading
import time
import tracemalloc
import zipfile

import pytest

from app.core.config import Settings
from app.core.text import visible_controls
from app.jobs.scan import fetch as fetch_module
from app.jobs.scan.fetch import FetchPolicy, address_allowed, fetch
from app.jobs.scan.outputs import matches_csv
from app.jobs.scan.reader import Listing, RowError, bounded_lines, open_dump, parse_manifest
from app.jobs.scan.report import render_report
from app.jobs.scan.sources import ImageUnavailable
from app.jobs.scan.work import Group
from tests.conftest import jpeg_bytes

KB = 1024
MB = 1024 * 1024
FORMULA_START = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
RLO = "\u202e"


# --- 3. dump lines are bounded ------------------------------------------------------------------


def _write_huge_line(f, size: int, listing_id: str = "HUGE") -> None:
    """A JSON line of ``size`` bytes, written in pieces: the test itself never holds it."""
    head = f'{{"listing_id": "{listing_id}", "images": ["a.jpg"], "description": "'.encode()
    f.write(head)
    piece = b"x" * MB
    left = size - len(head) - 3
    while left > 0:
        f.write(piece[:min(left, len(piece))])
        left -= len(piece)
    f.write(b'"}\n')


def _peak_while_reading(items) -> tuple[list, int]:
    tracemalloc.start()
    try:
        got = list(items)
        return got, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_50_mb_jsonl_line_in_a_zip_is_skipped_without_being_held(tmp_path):
    path = tmp_path / "dump.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("listings.jsonl", "w") as f:
            f.write(b'{"listing_id": "L1", "images": ["a.jpg"]}\n')
            _write_huge_line(f, 50 * MB)
            f.write(b'{"listing_id": "L3", "images": ["b.jpg"]}\r\n\n{"listing_id": "L5", "images": ["c.jpg"]}')
    assert path.stat().st_size < MB  # a small archive, as in the issue
    dump = open_dump(path, 1024, max_line_bytes=256 * KB)
    items, peak = _peak_while_reading(dump.items())
    assert [getattr(i, "listing_id", None) for i in items] == ["L1", None, "L3", "L5"]
    error = items[1]
    assert isinstance(error, RowError) and error.where == "line 2" and error.seq == 1
    assert "longer than the limit of 256 KB" in error.reason
    assert items[3].where == "line 5"  # \r\n and a blank line counted as lines
    assert peak < 3 * MB, f"reading held {peak / MB:.1f} MB"


def test_a_huge_csv_row_is_skipped_whether_one_line_or_a_quoted_cell_over_many(tmp_path):
    path = tmp_path / "dump.csv"
    with open(path, "wb") as f:
        f.write(b"listing_id,title,images\r\nL1,Ewer,a.jpg\r\n")
        f.write(b'L2,"')  # a quoted cell of 8 MB over 80 000 lines: each line is short, the row is not
        for _ in range(80_000):
            f.write(b"y" * 99 + b"\n")
        f.write(b'",b.jpg\r\n')
        f.write(b"L3,Lamp,c.jpg\r\n")
        f.write(b"L4," + b"z" * (8 * MB) + b",d.jpg\r\n")  # one 8 MB line
        f.write(b'L5,"two\nlines ""quoted""",e.jpg\r\n')
    items, peak = _peak_while_reading(open_dump(path, 1024, max_line_bytes=64 * KB).items())
    assert [getattr(i, "listing_id", None) for i in items] == ["L1", None, "L3", None, "L5"]
    assert [i.seq for i in items] == [0, 1, 2, 3, 4]
    assert items[1].where == "lines 3-80003" and "row is longer than the limit of 64 KB" in items[1].reason
    assert items[2].where == "line 80004"
    assert items[3].where == "line 80005" and "longer than the limit" in items[3].reason
    assert items[4].where == "lines 80006-80007" and items[4].fields["title"] == 'two\nlines "quoted"'
    assert peak < 2 * MB, f"reading held {peak / MB:.1f} MB"


def test_an_overlong_csv_header_is_reported():
    items = list(parse_manifest(io.BytesIO(b"listing_id," + b"h" * 5000 + b"\nL1,a.jpg\n"), "csv", 1024))
    assert len(items) == 1 and "header cannot be read" in items[0].reason


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_bounded_lines_split_as_text_mode_does_across_any_chunk_size(chunk):
    data = b"a\r\nbb\rccc\n\r\n" + b"d" * 10 + b"\nee\r" + b"f" * 11 + b"\r\ng"
    got = list(bounded_lines(io.BytesIO(data), 10, chunk=chunk))
    assert got == [b"a\r\n", b"bb\r", b"ccc\n", b"\r\n", b"d" * 10 + b"\n", b"ee\r", got[6], b"g"]
    assert type(got[6]).__name__ == "Overlong"


# --- 4. photos per listing are capped -----------------------------------------------------------


def test_photos_beyond_the_limit_are_dropped_before_anything_reads_them():
    refs = [f"p{i}.jpg" for i in range(300)]
    line = json.dumps({"listing_id": "MANY", "images": refs}).encode()
    csv_text = b"listing_id,images\nC," + "|".join(refs).encode() + b"\n"
    for raw, kind in ((line, "jsonl"), (csv_text, "csv")):
        (item,) = parse_manifest(io.BytesIO(raw), kind, max_images=20)
        assert isinstance(item, Listing)
        assert item.images == tuple(refs[:20]) and item.more_images == 280
        assert len(Group(0, [item]).image_jobs()) == 20  # what decode workers are given


# --- 5. no fetch of internal addresses ----------------------------------------------------------


class _CountingServer(http.server.ThreadingHTTPServer):
    """A loopback server that counts every TCP connection it accepts."""

    def __init__(self, host: str, handler):
        super().__init__((host, 0), handler)
        self.connections = 0
        self.hosts: list[str] = []

    def verify_request(self, request, client_address) -> bool:
        self.connections += 1
        return True


class _Photo(http.server.BaseHTTPRequestHandler):
    redirect_to = ""

    def do_GET(self):
        self.server.hosts.append(self.headers.get("Host", ""))
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"secret-internal-data"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(host: str, handler=_Photo):
    try:
        server = _CountingServer(host, handler)
    except OSError:
        pytest.skip(f"cannot listen on {host}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def internal():
    server = _serve("127.0.0.1")
    yield server
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


URL_FORMS = ["http://127.0.0.1:{port}/v1/keys", "http://127.1:{port}/openapi.json", "http://2130706433:{port}/docs",
             "http://0x7f.1:{port}/", "http://0177.0.0.1:{port}/", "http://localhost:{port}/",
             "http://0.0.0.0:{port}/", "http://[::1]:{port}/", "http://[::ffff:127.0.0.1]:{port}/",
             "https://127.0.0.1:{port}/", "HTTP://127.0.0.1:{port}/"]


@pytest.mark.parametrize("form", URL_FORMS)
def test_internal_addresses_are_refused_before_any_connection(internal, form):
    policy = FetchPolicy(enabled=True, retries=2, backoff_s=0.01)
    port = internal.server_address[1]
    with pytest.raises(ImageUnavailable) as open_port:
        fetch(form.format(port=port), policy)
    with pytest.raises(ImageUnavailable) as closed_port:
        fetch(form.format(port=_closed_port()), policy)
    assert internal.connections == 0  # nothing reached the internal server
    assert "is not a public address" in str(open_port.value)
    # One message whatever listens there: nothing to tell an open port from a closed one.
    assert (str(open_port.value).replace(str(port), "PORT").split(": ", 1)[1]
            == str(closed_port.value).split(": ", 1)[1])


def test_a_redirect_from_an_allowed_server_to_an_internal_one_is_refused(internal, monkeypatch):
    """The outside server is played by 127.0.0.2, the one loopback address the check lets through here."""
    outside_ip = ipaddress.ip_address("127.0.0.2")
    monkeypatch.setattr(fetch_module, "address_allowed", lambda ip: ip == outside_ip or address_allowed(ip))

    class Redirects(_Photo):
        redirect_to = f"http://127.1:{internal.server_address[1]}/v1/keys"

    outside = _serve("127.0.0.2", Redirects)
    try:
        url = f"http://127.0.0.2:{outside.server_address[1]}/photo.jpg"
        with pytest.raises(ImageUnavailable, match="is not a public address"):
            fetch(url, FetchPolicy(enabled=True, backoff_s=0.01))
        assert outside.connections == 1 and internal.connections == 0
        # With the address check off (HM_FETCH_ALLOW_PRIVATE), the same redirect is followed.
        assert fetch(url, FetchPolicy(enabled=True, allow_private=True)) == b"secret-internal-data"
        assert internal.connections == 1
    finally:
        outside.shutdown()
        outside.server_close()


def test_the_connection_goes_to_the_address_checked_not_a_later_answer(internal, monkeypatch):
    """DNS rebinding: the name resolves to an allowed address when checked, to loopback afterwards."""
    outside = _serve("127.0.0.2")
    outside_ip = ipaddress.ip_address("127.0.0.2")
    monkeypatch.setattr(fetch_module, "address_allowed", lambda ip: ip == outside_ip)
    real = socket.getaddrinfo
    answers = iter(["127.0.0.2"] + ["127.0.0.1"] * 10)

    def rebinding(host, port, *args, **kwargs):
        if host == "photos.example":
            return real(next(answers), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    try:
        port = outside.server_address[1]
        data = fetch(f"http://photos.example:{port}/a.jpg", FetchPolicy(enabled=True))
        assert data == b"secret-internal-data" and outside.connections == 1 and internal.connections == 0
        assert outside.hosts == [f"photos.example:{port}"]  # the Host header keeps the name
    finally:
        outside.shutdown()
        outside.server_close()


@pytest.mark.parametrize("ip,public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("::ffff:8.8.8.8", True),
    ("127.0.0.1", False), ("127.8.9.10", False), ("10.1.2.3", False), ("172.16.0.1", False),
    ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("239.255.255.250", False), ("240.0.0.1", False), ("255.255.255.255", False),
    ("192.0.2.1", False), ("198.18.0.1", False), ("::1", False), ("::", False), ("fe80::1", False),
    ("fc00::1", False), ("fd12:3456::1", False), ("ff02::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("::7f00:1", False), ("2002:7f00:1::", False), ("64:ff9b::a00:1", False),
    ("2001::1", False), ("fec0::1", False), ("2001:db8::1", False),
])
def test_only_public_addresses_are_allowed(ip, public):
    assert address_allowed(ipaddress.ip_address(ip)) is public


# --- 6. a whole-download deadline ---------------------------------------------------------------


class _Trickle(http.server.BaseHTTPRequestHandler):
    """A 4 KB photo in 10 pieces 0.5 s apart (5 s in all); /slow-headers trickles its status line."""

    def do_GET(self):
        try:
            if self.path == "/slow-headers":
                for byte in b"HTTP/1.1 200 OK\r\n":
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
                return
            self.send_response(200)
            self.send_header("Content-Length", "4000")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"p" * 400)
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass  # the client gave up

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("path", ["/photo.png", "/slow-headers"])
def test_a_trickling_server_cannot_hold_a_download_past_the_deadline(path):
    server = _serve("127.0.0.1", _Trickle)
    policy = FetchPolicy(enabled=True, timeout_s=20, deadline_s=1.5, retries=2, backoff_s=0.01, allow_private=True)
    try:
        t0 = time.monotonic()
        with pytest.raises(ImageUnavailable, match="longer than 1.5 s"):
            fetch(f"http://127.0.0.1:{server.server_address[1]}{path}", policy)
        elapsed = time.monotonic() - t0
    finally:
        server.shutdown()
        server.server_close()
    assert elapsed < 1.5 + 0.5, f"the download took {elapsed:.1f} s"
    assert server.connections == 1  # no retry after the deadline


# --- 7. CSV cells cannot become formulas whatever the separator --------------------------------

HOSTILE_CELLS = ["http://shop.example/item;=cmd|' /C calc'!A0;", "=HYPERLINK(\"http://x\")", "a,=1+1", "b; +2",
                 "c\t-3", "d\n@SUM(A1)", "e|=f", "\uff1d1+1", "\t=x", "\r+y", "ok", f"{RLO}exe.gpj"]


def _row(text: str) -> dict:
    return {"listing_id": text, "image": text, "artefact_id": 1, "inventory_number": text, "institution": text,
            "artefact_title": text, "score": 0.5, "verdict": "possible", "registry_photo_id": 2,
            "region": {"x0": 0, "y0": 0, "x1": 10, "y1": 10}, "listing": {"title": text, "url": text},
            "image_sha256": "ab"}


def _starts_a_formula(field: str) -> bool:
    return field.lstrip(' "')[:1] in FORMULA_START


def assert_no_formula_cell(text: str) -> None:
    for delimiter in (",", ";", "\t", "|"):
        for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
            bad = [f for f in row if _starts_a_formula(f)]
            assert not bad, (delimiter, bad)
        for line in text.splitlines():  # a naive split, as a careless import does
            bad = [f for f in line.split(delimiter) if _starts_a_formula(f)]
            assert not bad, (delimiter, bad)


def test_csv_cells_cannot_become_formulas_whatever_the_separator():
    text = matches_csv([_row(t) for t in HOSTILE_CELLS])
    assert_no_formula_cell(text)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1][0] == "http://shop.example/item;'=cmd|' /C calc'!A0;"  # still readable
    assert text.startswith('"listing_id","image",')  # every cell quoted
    assert RLO not in text and "\u2039U+202E\u203a" in text


# --- 8. bidirectional controls are visible in what people read ----------------------------------


def test_visible_controls_marks_bidi_and_terminal_controls_and_keeps_line_breaks():
    assert visible_controls(f"http://ok.example/{RLO}moc.elgoog//:sptth") == \
        "http://ok.example/\u2039U+202E\u203amoc.elgoog//:sptth"
    for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\x1b\x00\x9b":
        assert c not in visible_controls(f"a{c}b")
    plain = "caf\u00e9\tline\nnext\r\u05e9\u05dc\u05d5\u05dd"  # tab, line breaks, Hebrew: kept
    assert visible_controls(plain) == plain
    assert visible_controls(visible_controls(RLO)) == visible_controls(RLO)


def test_the_report_shows_bidi_controls_and_isolates_listing_text(tmp_path):
    url = f"http://ok.example/{RLO}moc.elgoog//:sptth"
    match = {"seq": 0, "image_index": 0, "image": f"img/{RLO}exe.gpj", "image_sha256": "ab", "rank": 1,
             "artefact_id": 1, "inventory_number": f"INV{RLO}1", "institution": "Museum", "artefact_title": "Ewer",
             "status": "stolen", "score": 0.9, "verdict": "match", "registry_photo_id": 2, "region": None,
             "evidence": {}, "listing_id": f"L{RLO}1",
             "listing": {"title": f"{RLO}exe.gpj", "url": url, "description": "x\u2067y", "seller": "s\u200fz"}}
    html = render_report([match], tmp_path, {}, {"dump": f"/d/{RLO}dump.jsonl"})
    for c in "\u202e\u2067\u200f":
        assert c not in html
    assert html.count("\u2039U+202E\u203a") >= 6 and "\u2039U+2067\u203a" in html and "\u2039U+200F\u203a" in html
    assert "<bdi>\u2039U+202E\u203aexe.gpj</bdi>" in html and "<bdi>img/\u2039U+202E\u203aexe.gpj</bdi>" in html
    assert "dir='auto'" in html
    # The link still goes where the URL says (%-encoded, as a browser sends it); its text shows the control.
    assert "href='http://ok.example/%E2%80%AEmoc.elgoog//:sptth'" in html
    assert ">http://ok.example/\u2039U+202E\u203amoc.elgoog//:sptth</bdi></a>" in html


# --- one scan with all of it --------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory, encoder, coins):
    """Three demo coins: enough for candidates, a fraction of the demo registry's set-up time."""
    from app.jobs.demo import coin_record, png_bytes
    from app.service import MatchingService, PhotoInput

    root = tmp_path_factory.mktemp("registry")
    settings = Settings(data_dir=root / "data", models_dir=root / "models", model="efficientnet-lite0", device="cpu",
                        scan_max_line_kb=64, scan_max_images_per_listing=3, fetch_deadline_s=7)
    svc = MatchingService(settings, encoder=encoder).start()
    for coin in coins[:3]:
        svc.register_artefact(coin_record(coin), [PhotoInput(png_bytes(coin.image), view="obverse")])
    svc.close()
    return settings


def test_a_hostile_dump_is_scanned_within_its_limits(registry, encoder, coins, tmp_path, monkeypatch):
    from app.jobs.scan.pipeline import LocalEngine
    from app.jobs.scan.runner import ScanOptions, run_scan
    from app.service import MatchingService

    configs = []
    real_run = LocalEngine.run
    monkeypatch.setattr(LocalEngine, "run", lambda self, groups, source, cfg, *a: configs.append(cfg)
                        or real_run(self, groups, source, cfg, *a))

    folder = tmp_path / "dump"
    (folder / "img").mkdir(parents=True)
    trick = f"img/{RLO}exe.gpj"  # a JPEG whose name displays as "jpg.exe"
    (folder / trick).write_bytes(jpeg_bytes(coins[0].image))
    (folder / "img/c1.jpg").write_bytes(jpeg_bytes(coins[1].image))
    (folder / "img/c2.jpg").write_bytes(jpeg_bytes(coins[2].image))
    path = folder / "dump.jsonl"
    with open(path, "wb") as f:
        f.write(json.dumps({"listing_id": "BIDI", "title": f"{RLO}exe.gpj", "images": [trick],
                            "url": "http://shop.example/item;=cmd|' /C calc'!A0;"}).encode() + b"\n")
        _write_huge_line(f, 2 * MB)
        # Three photos that exist, then seven that do not: read, the seven would each be an error.
        f.write(json.dumps({"listing_id": "MANY", "title": "=1+1",
                            "images": ["img/c1.jpg", "img/c2.jpg", "img/c1.jpg"]
                            + [f"img/missing{i}.jpg" for i in range(7)]}).encode() + b"\n")
        f.write(json.dumps({"listing_id": "LAST", "images": ["img/c2.jpg"]}).encode() + b"\n")
    out = tmp_path / "out"
    svc = MatchingService(registry, encoder=encoder).start()
    try:
        summary = run_scan(ScanOptions(dump=path, out=out, workers=1, min_verdict="no_match"), registry, svc)
    finally:
        svc.close()
    assert summary.listings == 3 and summary.row_errors == 1 and summary.images == 5
    # The settings reach the fetcher: a 7 s deadline, internal addresses refused.
    assert configs[0].fetch.deadline_s == 7 and configs[0].fetch.allow_private is False
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["where"], e["listing_id"], e["image_index"]) for e in errors] == [("line 2", None, None),
                                                                                ("line 3", "MANY", 3)]
    assert "longer than the limit of 64 KB" in errors[0]["reason"]
    assert "names 10 photos; only the first 3" in errors[1]["reason"] and "other 7" in errors[1]["reason"]
    assert not any("missing" in json.dumps(e) for e in errors)  # never read
    matches = [json.loads(line) for line in (out / "matches.jsonl").read_text().splitlines()]
    assert {m["listing_id"] for m in matches} == {"BIDI", "MANY", "LAST"}
    assert any(m["image"] == trick for m in matches)  # machine output keeps the text as it is

    text = (out / "matches.csv").read_text()
    assert_no_formula_cell(text)
    assert RLO not in text
    report = (out / "report.html").read_text()
    assert RLO not in report and "<bdi>img/\u2039U+202E\u203aexe.gpj</bdi>" in report
