"""Every file the service keeps is this user's only, whatever the umask (hostile review, item 11).

The data directory holds the registry, key hashes, the audit trail and officers' query photos; a scan's
output folder holds listing matches. With umask 022 (most systems' default) nothing there may be
readable by another local user.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.jobs.demo import seed_demo
from app.main import create_app
from app.security.audit import AuditLog
from app.service import MatchingService
from tests.conftest import coin_query, jpeg_bytes, random_photo
from tests.web.test_web import sign_in, web_search


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def shared_modes(root: Path) -> dict[str, str]:
    """Every file and folder under root that a group or other user could read, write or enter."""
    loose = {}
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            loose[str(path.relative_to(root)) or "."] = oct(mode)
    return loose


def test_data_directory_is_private_whatever_the_umask(loose_umask, tmp_path, encoder, coins):
    import random

    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", model="efficientnet-lite0",
                        device="cpu", rate_limit_per_minute=0, auth_failures_per_minute=0)
    service = MatchingService(settings, encoder=encoder).start()
    try:
        seed_demo(service)  # records, photos, vectors, the saved index, the audit trail
        from app.security.keys import KeyStore

        secret = KeyStore(service.store.sessions).create("officer-key", "officer").token
        app = create_app(settings, service=service)
        with TestClient(app) as client:  # a kept web search with its query photo (in the registry database)
            assert sign_in(client, secret).status_code == 303
            results = web_search(client, coin_query(coins[0].image, random.Random(1)))
            assert client.get(results).status_code == 200
        AuditLog(service.store.sessions).export_jsonl(tmp_path / "audit.jsonl")
    finally:
        service.close()
    data = settings.data_dir
    assert (data / "registry.db").exists()
    assert list((data / "photos").rglob("*.jpg")) or list((data / "photos").rglob("*.png"))
    assert shared_modes(data) == {}
    assert stat.S_IMODE((tmp_path / "audit.jsonl").stat().st_mode) == 0o600


def test_an_existing_registry_made_under_umask_022_is_tightened_at_start(loose_umask, tmp_path, encoder):
    """A registry from an older release (files 0644, folder 0755) is made private when the service opens it."""
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", model="efficientnet-lite0",
                        device="cpu")
    MatchingService(settings, encoder=encoder).start().close()
    data = settings.data_dir
    os.chmod(data, 0o755)
    for path in data.iterdir():
        if path.is_file():
            os.chmod(path, 0o644)
    service = MatchingService(settings, encoder=encoder).start()  # opening it is what tightens it
    try:
        assert (data / "registry.db-wal").exists()  # made by SQLite now, with the database file's mode
        assert shared_modes(data) == {}
    finally:
        service.close()
def test_scan_outputs_are_private_whatever_the_umask(loose_umask, tmp_path, encoder, coins):
    import random

    from app.jobs.scan.runner import ScanOptions, run_scan

    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", model="efficientnet-lite0",
                        device="cpu")
    service = MatchingService(settings, encoder=encoder).start()
    try:
        seed_demo(service)
        dump_dir = tmp_path / "dump"
        dump_dir.mkdir()
        rng = random.Random(3)
        rows = []
        for n in range(2):
            (dump_dir / f"coin{n}.jpg").write_bytes(coin_query(coins[n].image, rng))
            rows.append({"listing_id": f"C{n}", "title": "coin", "images": [f"coin{n}.jpg"]})
        (dump_dir / "other.jpg").write_bytes(jpeg_bytes(random_photo(9)))
        rows.append({"listing_id": "D", "images": ["other.jpg", "missing.jpg"]})
        (dump_dir / "dump.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp_path / "out"
        summary = run_scan(ScanOptions(dump=dump_dir / "dump.jsonl", out=out, workers=1), settings, service=service)
    finally:
        service.close()
    assert summary.status == "finished" and summary.image_errors == 1
    for name in ("matches.jsonl", "matches.csv", "errors.jsonl", "report.html"):
        assert (out / name).exists(), name
    assert shared_modes(out) == {}
