"""Scans of listing dumps: candidates, errors, report, archives, resume after a kill, Ray vs local."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from app.core.config import Settings
from app.jobs.scan.runner import ScanOptions, ScanRefused, run_scan
from tests.conftest import DATABASES, ROOT, coin_query, jpeg_bytes, random_photo

COINS = 8  # registered coins photographed for listings
DISTRACTORS = 6  # unregistered objects
HOSTILE_TITLE = "Ancient coin <script>alert('x')</script> & \"more\""


def pytest_generate_tests(metafunc):
    """The scans marked ``databases`` run on a SQLite and on a PostgreSQL registry, the others on SQLite: Ray and
    the kill-and-resume exercise the scan engine, not the database, and would add minutes."""
    if "scan_db" in metafunc.fixturenames:
        databases = DATABASES if metafunc.definition.get_closest_marker("databases") else DATABASES[:1]
        metafunc.parametrize("scan_db", databases, indirect=True, scope="module")


@pytest.fixture(scope="module")
def scan_db(request):
    """The registry database of the module's registry: None (SQLite in its data directory), or PostgreSQL."""
    if request.param == "sqlite":
        yield None
        return
    server = request.getfixturevalue("pg_server")
    url = server.fresh_database()
    yield url
    server.drop_database(url)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, encoder, scan_db):
    """The 24 demo coins registered once for the module (scans only read the registry)."""
    from app.jobs.demo import seed_demo
    from app.service import MatchingService

    root = tmp_path_factory.mktemp("registry")
    settings = Settings(data_dir=root / "data", models_dir=root / "models", model="efficientnet-lite0", device="cpu",
                        database_url=scan_db)
    svc = MatchingService(settings, encoder=encoder).start()
    assert seed_demo(svc) == 24
    svc.close()
    return settings


def registry_env(registry: Settings) -> dict[str, str]:
    """The environment a scan command needs to open ``registry``."""
    env = {"HM_DATA_DIR": str(registry.data_dir), "HM_MODELS_DIR": str(registry.models_dir),
           "HM_MODEL": "efficientnet-lite0", "HM_DEVICE": "cpu"}
    if registry.database_url:
        env["HM_DATABASE_URL"] = registry.database_url
    return env


@pytest.fixture
def scan_service(registry, encoder):
    from app.service import MatchingService

    svc = MatchingService(registry, encoder=encoder).start()
    yield svc
    svc.close()


def write_dump(folder: Path, coins, copies: int = 1) -> Path:
    """A JSONL dump: coin listings (listing transforms), distractors, a truncated JPEG, a missing file,
    a path leaving the dump, a URL without --fetch, and two bad rows. ``copies`` repeats the listings."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    rows = []
    for c in range(copies):
        for n in range(COINS):
            name = f"img/coin{c}-{n}.jpg"
            (folder / name).write_bytes(coin_query(coins[n].image, rng))
            rows.append({"listing_id": f"C{c}-{n}", "title": HOSTILE_TITLE, "description": "Found <b>in a field</b>",
                         "url": "https://market.example/item?id=1&x=<y>", "price": 120, "currency": "EUR",
                         "seller": "s1", "platform": "example", "listed_at": "2026-11-01", "images": [name]})
        for n in range(DISTRACTORS):
            name = f"img/other{c}-{n}.jpg"
            (folder / name).write_bytes(jpeg_bytes(random_photo(100 + n + 50 * c)))
            rows.append({"listing_id": f"D{c}-{n}", "title": "old vase", "url": "javascript:alert(1)",
                         "images": [name]})
    full = jpeg_bytes(random_photo(5))
    (folder / "img/trunc.jpg").write_bytes(full[: len(full) // 2])
    rows.append({"listing_id": "BROKEN", "images": ["img/trunc.jpg", "img/missing.jpg", "../outside.jpg",
                                                    "https://example.org/a.jpg"]})
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({"title": "no id", "images": ["img/coin0-0.jpg"]}))
    dump = folder / "dump.jsonl"
    dump.write_text("\n".join(lines) + "\n")
    return dump


@pytest.fixture(scope="module")
def dump(tmp_path_factory, coins) -> Path:
    return write_dump(tmp_path_factory.mktemp("dump"), coins)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def output_files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("matches.jsonl", "errors.jsonl", "matches.csv", "report.html")}


@pytest.mark.databases
def test_scan_finds_coins_reports_errors_and_writes_a_safe_report(dump, registry, scan_service, coins, tmp_path):
    out = tmp_path / "out"
    summary = run_scan(ScanOptions(dump=dump, out=out, workers=1), registry, service=scan_service)
    assert summary.status == "finished"
    assert summary.listings == COINS + DISTRACTORS + 1 and summary.row_errors == 2
    assert summary.images == COINS + DISTRACTORS and summary.image_errors == 4

    matches = read_jsonl(out / "matches.jsonl")
    first = {m["listing_id"]: m for m in matches if m["rank"] == 1}
    found = [n for n in range(COINS) if first.get(f"C0-{n}", {}).get("inventory_number") == coins[n].inventory_number]
    assert len(found) >= COINS - 2, first
    assert all(m["verdict"] in ("match", "possible") for m in matches)
    assert not any(m["listing_id"].startswith("D") and m["verdict"] == "match" for m in matches)
    assert matches == sorted(matches, key=lambda m: (m["seq"], m["image_index"], m["rank"]))
    assert sum(summary.candidates.values()) == len(matches)

    errors = {(e["listing_id"], e["image"]): e["reason"] for e in read_jsonl(out / "errors.jsonl")}
    assert "truncated" in errors[("BROKEN", "img/trunc.jpg")]
    assert "not found" in errors[("BROKEN", "img/missing.jpg")]
    assert "leaves the dump" in errors[("BROKEN", "../outside.jpg")]
    assert "--fetch" in errors[("BROKEN", "https://example.org/a.jpg")]
    row_errors = [e for e in read_jsonl(out / "errors.jsonl") if e["image"] is None]
    assert [(e["where"], e["reason"][:14]) for e in row_errors] == [("line 4", "not valid JSON"),
                                                                    ("line 6", "listing_id is ")]

    csv_rows = list(csv.reader(io.StringIO((out / "matches.csv").read_text())))
    assert csv_rows[0][:4] == ["listing_id", "image", "artefact_id", "inventory_number"]
    assert len(csv_rows) == len(matches) + 1

    report = (out / "report.html").read_text()
    assert "<script>alert" not in report and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in report
    assert "<b>in a field</b>" not in report
    assert "href='javascript:" not in report and "href='https://market.example/item?id=1&amp;x=&lt;y&gt;'" in report
    assert "Content-Security-Policy" in report and "http://" not in report.split("<body>")[0]
    # Every candidate shows the listing photo beside the registry photo, both embedded.
    assert report.count("src='data:image/jpeg;base64,") == 2 * len(matches)
    assert report.count("class='artefact'") == len({m["artefact_id"] for m in matches})
    assert "sortBy('asc')" in report

    # The run is in the audit trail, with its counts.
    from app.security.audit import AuditLog, event_dict

    scans = [event_dict(e) for e in AuditLog(scan_service.store.sessions).events() if e.action == "scan"]
    assert len(scans) == 1 and scans[0]["details"]["summary"]["images"] == COINS + DISTRACTORS


def test_min_verdict_match_keeps_only_matches(dump, registry, scan_service, tmp_path):
    out = tmp_path / "out"
    summary = run_scan(ScanOptions(dump=dump, out=out, workers=1, min_verdict="match"), registry, service=scan_service)
    matches = read_jsonl(out / "matches.jsonl")
    assert all(m["verdict"] == "match" for m in matches) and summary.candidates["possible"] == 0


def test_finished_scan_is_not_redone_and_other_dumps_are_refused(dump, registry, scan_service, tmp_path, coins):
    out = tmp_path / "out"
    run_scan(ScanOptions(dump=dump, out=out, workers=1), registry, service=scan_service)
    before = output_files(out)
    again = run_scan(ScanOptions(dump=dump, out=out, workers=1), registry, service=scan_service)
    assert again.status == "already_finished" and again.images == COINS + DISTRACTORS
    assert output_files(out) == before

    other_dump = tmp_path / "other.jsonl"
    other_dump.write_text(json.dumps({"listing_id": "x", "images": []}) + "\n")
    for resume in (False, True):
        with pytest.raises(ScanRefused, match="another dump"):
            run_scan(ScanOptions(dump=other_dump, out=out, resume=resume), registry, service=scan_service)
    with pytest.raises(ScanRefused, match="other settings"):
        run_scan(ScanOptions(dump=dump, out=out, min_verdict="match", resume=True), registry, service=scan_service)
    assert output_files(out) == before


def test_archives_and_csv_give_the_same_candidates(dump, registry, scan_service, tmp_path):
    ref_out = tmp_path / "ref"
    run_scan(ScanOptions(dump=dump, out=ref_out, workers=1), registry, service=scan_service)
    expected = [(m["listing_id"], m["image"], m["artefact_id"], m["score"])
                for m in read_jsonl(ref_out / "matches.jsonl")]

    tar_path = tmp_path / "dump.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(dump, arcname="dump.jsonl")
        tar.add(dump.parent / "img", arcname="img")
        evil = tarfile.TarInfo("../outside.jpg")  # a member outside the archive's root is never read
        data = b"not read"
        evil.size = len(data)
        tar.addfile(evil, io.BytesIO(data))
    run_scan(ScanOptions(dump=tar_path, out=tmp_path / "tar", workers=1), registry, service=scan_service)
    got = [(m["listing_id"], m["image"], m["artefact_id"], m["score"])
           for m in read_jsonl(tmp_path / "tar" / "matches.jsonl")]
    assert got == expected
    tar_errors = {e["image"]: e["reason"] for e in read_jsonl(tmp_path / "tar" / "errors.jsonl") if e["image"]}
    assert "leaves the dump" in tar_errors["../outside.jpg"] and "not in the archive" in tar_errors["img/missing.jpg"]

    # CSV: the same listings, images separated by |
    import csv

    csv_path = dump.parent / "dump.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["listing_id", "title", "url", "images"])
        for line in dump.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                w.writerow(["bad", "row", "with", "too", "many", "cells"])
                continue
            w.writerow([row.get("listing_id", ""), row.get("title", ""), row.get("url", ""),
                        "|".join(row.get("images", []))])
    run_scan(ScanOptions(dump=csv_path, out=tmp_path / "csv", workers=1), registry, service=scan_service)
    got = [(m["listing_id"], m["image"], m["artefact_id"], m["score"])
           for m in read_jsonl(tmp_path / "csv" / "matches.jsonl")]
    assert got == expected
    csv_errors = read_jsonl(tmp_path / "csv" / "errors.jsonl")
    assert (any("cells" in e["reason"] for e in csv_errors)
            and any("listing_id is missing" in e["reason"] for e in csv_errors))

    # A zip of photos only: every photo is its own listing.
    zip_path = tmp_path / "photos.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted((dump.parent / "img").glob("coin*.jpg"))[:3]:
            zf.write(p, f"photos/{p.name}")
        zf.writestr("photos/notes.txt", "not a photo")
    summary = run_scan(ScanOptions(dump=zip_path, out=tmp_path / "zip", workers=1), registry, service=scan_service)
    assert summary.listings == 3 and summary.images == 3 and summary.errors == 0
    assert {m["listing_id"] for m in read_jsonl(tmp_path / "zip" / "matches.jsonl")} <= {
        f"photos/coin0-{n}.jpg" for n in range(3)}


def children_of(pid: int) -> set[int]:
    """Child processes (Linux /proc); empty where it cannot tell."""
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its new parent to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_until(check, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_kill_and_resume_gives_the_outputs_of_an_uninterrupted_run(registry, scan_service, coins, tmp_path):
    dump = write_dump(tmp_path / "dump", coins, copies=3)  # 43 listings: three groups of 16
    clean = tmp_path / "clean"
    run_scan(ScanOptions(dump=dump, out=clean, workers=1), registry, service=scan_service)

    out = tmp_path / "killed"
    env = {**{k: v for k, v in os.environ.items() if k != "HM_DATABASE_URL"}, **registry_env(registry)}
    cmd = [sys.executable, "-m", "app.cli", "scan", str(dump), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_log = out / "scan-done.log"
    deadline = time.monotonic() + 240
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= children_of(proc.pid)
        if done_log.exists() and done_log.read_text().count("\n") >= 1:
            workers |= children_of(proc.pid)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the scan finished before it could be killed"
    assert not (out / "report.html").exists()
    # Its decode workers do not outlive it (they would wait for work forever).
    if Path("/proc/self/task").is_dir():
        assert workers, "the scan's decode workers were not seen"
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 15), "decode workers outlived the scan"

    with pytest.raises(ScanRefused, match="--resume"):
        run_scan(ScanOptions(dump=dump, out=out, workers=1), registry, service=scan_service)
    summary = run_scan(ScanOptions(dump=dump, out=out, workers=1, resume=True), registry, service=scan_service)
    assert summary.status == "finished" and 0 < summary.images_this_run < summary.images
    assert output_files(out) == output_files(clean)


def test_ray_engine_gives_the_local_engine_outputs(dump, registry, scan_service, tmp_path):
    ray = pytest.importorskip("ray")
    local = tmp_path / "local"
    run_scan(ScanOptions(dump=dump, out=local, workers=1), registry, service=scan_service)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             log_to_driver=False)
    try:
        on_ray = tmp_path / "ray"
        summary = run_scan(ScanOptions(dump=dump, out=on_ray, engine="ray"), registry)
    finally:
        ray.shutdown()
    assert summary.status == "finished" and summary.images == COINS + DISTRACTORS
    assert output_files(on_ray) == output_files(local)


def test_fetch_downloads_url_photos_from_a_local_server(dump, registry, scan_service, tmp_path):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(dump.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        by_url = tmp_path / "urls.jsonl"
        by_url.write_text("".join(json.dumps({"listing_id": f"U{n}", "images": [f"{base}/img/coin0-{n}.jpg"]}) + "\n"
                                  for n in range(3))
                          + json.dumps({"listing_id": "U404", "images": [f"{base}/none.jpg"]}) + "\n")
        on_loopback = registry.model_copy(update={"fetch_allow_private": True})  # the test server's address
        summary = run_scan(ScanOptions(dump=by_url, out=tmp_path / "out", workers=1, fetch=True), on_loopback,
                           service=scan_service)
    finally:
        server.shutdown()
        server.server_close()
    assert summary.images == 3 and summary.image_errors == 1
    assert "HTTP 404" in read_jsonl(tmp_path / "out" / "errors.jsonl")[0]["reason"]
    run_scan(ScanOptions(dump=dump, out=tmp_path / "ref", workers=1), registry, service=scan_service)
    expected = {m["listing_id"].replace("C0-", "U"): m["artefact_id"]
                for m in read_jsonl(tmp_path / "ref" / "matches.jsonl")
                if m["rank"] == 1 and m["listing_id"] in ("C0-0", "C0-1", "C0-2")}
    got = {m["listing_id"]: m["artefact_id"] for m in read_jsonl(tmp_path / "out" / "matches.jsonl") if m["rank"] == 1}
    assert got == expected and len(got) == 3


@pytest.mark.databases
def test_scan_command_line(dump, registry, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app
    from app.core.config import get_settings

    monkeypatch.delenv("HM_DATABASE_URL", raising=False)
    for name, value in registry_env(registry).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        out = tmp_path / "out"
        r = runner.invoke(app, ["scan", str(dump), "--out", str(out), "--workers", "1", "--min-verdict", "match"])
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["status"] == "finished" and summary["errors"] == 6 and summary["images_per_s"] > 0
        assert "candidates:" in r.output and (out / "report.html").is_file()
        r = runner.invoke(app, ["scan", str(dump), "--out", str(out), "--min-verdict", "match"])
        assert r.exit_code == 0 and "nothing to do" in r.output
        r = runner.invoke(app, ["scan", str(dump), "--out", str(out), "--min-verdict", "possible"])
        assert r.exit_code == 1 and "other settings" in r.output
    finally:
        get_settings.cache_clear()


@pytest.mark.databases
def test_local_engine_keeps_a_bounded_number_of_groups_in_flight(dump, registry, scan_service):
    from app.jobs.scan.fetch import FetchPolicy
    from app.jobs.scan.pipeline import LocalEngine
    from app.jobs.scan.reader import Listing, open_dump
    from app.jobs.scan.work import DecodeConfig, Group

    pulled, emitted, most_ahead = [], [], []

    def endless_groups():  # as long a dump as we like: the engine must not read it all first
        for n in range(12):
            pulled.append(n)
            most_ahead.append(len(pulled) - len(emitted))
            yield Group(n, [Listing(n, f"L{n}", {}, ("img/other0-0.jpg",), "")])

    engine = LocalEngine(scan_service, workers=1, ahead=2)
    cfg = DecodeConfig(max_pixels=registry.max_image_pixels, min_side=448, fetch=FetchPolicy())
    engine.run(endless_groups(), open_dump(dump, 10**7).source, cfg, 5, "possible", lambda r: emitted.append(r.number))
    assert emitted == list(range(12))
    assert max(most_ahead) <= 3  # the group being searched plus two decoding ahead


def test_ray_actor_loads_the_model_once_for_the_whole_scan(dump, registry, tmp_path, monkeypatch):
    """Many small groups through one actor: one model load for the scan, not one per block."""
    ray = pytest.importorskip("ray")
    from app.jobs.scan import runner
    from app.jobs.scan.ray_engine import RayEngine

    engines = []
    real_engine = runner._engine
    monkeypatch.setattr(runner, "_engine", lambda *a: engines.append(real_engine(*a)) or engines[-1])
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             log_to_driver=False)
    try:
        summary = run_scan(ScanOptions(dump=dump, out=tmp_path / "ray", engine="ray", group_size=2), registry)
    finally:
        ray.shutdown()
    assert summary.status == "finished" and summary.listings > 4  # several groups went through
    assert isinstance(engines[0], RayEngine)
    assert len(engines[0].model_loads) == 1


@pytest.mark.databases
def test_a_resume_keeps_only_the_recorded_attempt_of_a_redone_group(scan_service, coins, tmp_path, monkeypatch):
    """A kill after a group's rows were written but before the checkpoint recorded the group; on
    --resume the photo's site answers. Only the redone group's outcome may be in the outputs."""
    import http.server
    import threading

    from app.jobs.scan import checkpoint

    photo = jpeg_bytes(coins[0].image)
    up = threading.Event()

    class Site(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if not up.is_set():
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = scan_service.settings.model_copy(update={"fetch_allow_private": True})  # the site is on loopback
    try:
        dump = tmp_path / "dump.jsonl"
        url = f"http://127.0.0.1:{server.server_address[1]}/a.jpg"
        dump.write_text(json.dumps({"listing_id": "L1", "images": [url]}) + "\n")
        out = tmp_path / "out"

        def killed_before_the_record(self, finished):
            raise KeyboardInterrupt  # as a SIGKILL here: the rows are fsynced, the group is not recorded

        with monkeypatch.context() as m:
            m.setattr(checkpoint.Checkpoint, "record", killed_before_the_record)
            with pytest.raises(KeyboardInterrupt):
                run_scan(ScanOptions(dump=dump, out=out, workers=1, fetch=True), settings, scan_service)
        assert "404" in (out / "errors.jsonl").read_text()
        up.set()
        summary = run_scan(ScanOptions(dump=dump, out=out, workers=1, fetch=True, resume=True),
                           settings, scan_service)
    finally:
        server.shutdown()
    assert summary.images == 1 and summary.image_errors == 0
    assert (out / "errors.jsonl").read_text() == ""
    matches = [json.loads(line) for line in (out / "matches.jsonl").read_text().splitlines()]
    assert matches and {m["listing_id"] for m in matches} == {"L1"}


@pytest.mark.databases
def test_a_folder_scan_with_a_name_that_is_not_utf8_finishes_and_out_may_not_be_inside(scan_service, coins, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg_bytes(coins[2].image))
    with open(os.fsencode(folder) + b"/caf\xe9.jpg", "wb") as f:  # a Windows archive's Latin-1 name
        f.write(jpeg_bytes(coins[3].image))
    with pytest.raises(ScanRefused, match="inside the folder"):
        run_scan(ScanOptions(dump=folder, out=folder / "results", workers=1), scan_service.settings, scan_service)
    out = tmp_path / "out"
    summary = run_scan(ScanOptions(dump=folder, out=out, workers=1), scan_service.settings, scan_service)
    assert summary.images == 2 and summary.errors == 0
    rows = [json.loads(line) for line in (out / "matches.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["image"] for r in rows} == {"a.jpg", "caf\udce9.jpg"}
    assert (out / "report.html").is_file() and b"caf\\udce9.jpg" in (out / "matches.csv").read_bytes()
    again = run_scan(ScanOptions(dump=folder, out=out, workers=1), scan_service.settings, scan_service)
    assert again.status == "already_finished"
