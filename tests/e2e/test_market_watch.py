"""The market over time: a listing seen before an object is reported raises an alert once it is registered.

End to end: a scan archives a listing whose coin is not registered (no alert); the coin is registered
through the API; the running server's retro-hunt finds the archived listing within seconds, the alert
reaches a loopback webhook receiver signed, and confirming it in the web page is audited. A listing
seen in two dumps is one archive entry seen twice; ``watch`` scans a dump dropped in a folder and
skips the listings the archive already holds.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.jobs.archive import ListingArchive
from app.jobs.demo import coin_record, png_bytes
from app.jobs.scan.runner import ScanOptions, run_scan
from app.main import create_app
from app.registry.alerts import AlertStore
from app.security.audit import AuditLog, event_dict
from app.service import MatchingService, PhotoInput
from tests.conftest import bearer, coin_query, jpeg_bytes, random_photo
from tests.jobs.test_webhooks import Receiver, verify
from tests.web.test_web import csrf_of, sign_in

NEW, OLD = 0, 1  # coins[0] is reported only after the scan; coins[1] is registered before


@pytest.fixture
def market(tmp_path, encoder, coins):
    """A registry of the demo coins but coins[NEW], and a dump listing coins[NEW], coins[OLD] and an unrelated vase."""
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", model="efficientnet-lite0",
                        device="cpu", rate_limit_per_minute=0, auth_failures_per_minute=0,
                        webhook_allow_private=True, webhook_timeout_s=3)
    service = MatchingService(settings, encoder=encoder).start()
    for coin in coins[:8]:
        if coin.number != coins[NEW].number:
            service.register_artefact(coin_record(coin), [PhotoInput(png_bytes(coin.image), view="obverse")])
    dump = tmp_path / "dumps" / "monday.jsonl"
    dump.parent.mkdir()
    rng = random.Random(11)
    (dump.parent / "new.jpg").write_bytes(coin_query(coins[NEW].image, rng))
    (dump.parent / "old.jpg").write_bytes(coin_query(coins[OLD].image, rng))
    (dump.parent / "vase.jpg").write_bytes(jpeg_bytes(random_photo(77)))
    rows = [{"listing_id": "L-NEW", "platform": "bazaar", "title": "Old silver coin", "seller": "s9",
             "url": "https://bazaar.example/l/new", "price": 90, "currency": "EUR", "images": ["new.jpg"]},
            {"listing_id": "L-OLD", "platform": "bazaar", "title": "Coin", "images": ["old.jpg"]},
            {"listing_id": "L-VASE", "platform": "bazaar", "title": "Vase", "images": ["vase.jpg"]}]
    dump.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yield settings, service, dump
    service.close()


def test_a_listing_archived_before_its_object_was_reported_raises_a_signed_audited_alert(market, coins, tmp_path):
    settings, service, dump = market
    first = run_scan(ScanOptions(dump=dump, out=tmp_path / "scan1", workers=1), settings, service=service)
    assert first.status == "finished" and first.archived_this_run == 3
    alerts = AlertStore(service.store.sessions)
    listed = {a.listing_id: a for a in alerts.list()[0]}
    assert "L-NEW" not in listed  # nothing registered looks like it yet
    assert "L-OLD" in listed and listed["L-OLD"].source == "scan"  # a registered coin's `match` is an alert

    from app.security.keys import KeyStore

    admin = KeyStore(service.store.sessions).create("admin-key", "admin").token
    registrar = KeyStore(service.store.sessions).create("registrar-key", "registrar").token
    receiver = Receiver()
    try:
        with TestClient(create_app(settings, service=service)) as client:
            hook = client.post("/v1/webhooks", json={"url": receiver.url}, headers=bearer(admin))
            assert hook.status_code == 201, hook.text
            secret = hook.json()["secret"]

            t0 = time.monotonic()
            made = client.post("/v1/artefacts", json=coin_record(coins[NEW]), headers=bearer(registrar))
            assert made.status_code == 201, made.text
            artefact_id = made.json()["id"]
            photos = client.post(f"/v1/artefacts/{artefact_id}/photos", headers=bearer(registrar),
                                 files={"image": ("coin.png", png_bytes(coins[NEW].image), "image/png")})
            assert photos.status_code == 201, photos.text
            registered_in = time.monotonic() - t0

            alert = None
            while alert is None and time.monotonic() - t0 < 20:
                page = client.get("/v1/alerts?status=new", headers=bearer(registrar)).json()
                alert = next((a for a in page["items"] if a["listing"]["listing_id"] == "L-NEW"), None)
                time.sleep(0.2)
            assert alert is not None, "no alert for the archived listing within 20 s of registering its coin"
            found_in = time.monotonic() - t0
            assert alert["source"] == "retrohunt" and alert["artefact"]["id"] == artefact_id
            assert alert["verdict"] in ("match", "possible") and alert["evidence"]["summary"]
            assert alert["listing"]["url"] == "https://bazaar.example/l/new"
            assert found_in - registered_in < 10  # "within a few seconds"

            assert receiver.got_request.wait(15), "the webhook receiver got nothing"
            delivered = [r for r in receiver.requests if json.loads(r["body"])["alert"]["id"] == alert["id"]]
            assert delivered and verify(secret, delivered[0]["headers"], delivered[0]["body"])

            assert sign_in(client, registrar, next="/alerts").status_code == 303
            page = client.get(f"/alerts/{alert['id']}").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1) if "csrf_token" in page \
                else csrf_of(client, f"/alerts/{alert['id']}")
            done = client.post(f"/alerts/{alert['id']}", data={"csrf_token": token, "status": "confirmed"},
                               follow_redirects=False)
            assert done.status_code == 303
    finally:
        receiver.close()
    changes = [event_dict(e) for e in AuditLog(service.store.sessions).events() if e.action == "alert.status"]
    assert [(c["details"]["alert_id"], c["key_name"]) for c in changes] == [(alert["id"], "registrar-key")]
    assert alerts.get(alert["id"]).status == "confirmed"


def test_a_listing_seen_in_two_dumps_is_one_archive_entry_seen_twice_and_watch_skips_it(market, tmp_path):
    settings, service, dump = market
    run_scan(ScanOptions(dump=dump, out=tmp_path / "scan1", workers=1), settings, service=service)
    tuesday = tmp_path / "dumps" / "tuesday.jsonl"
    tuesday.write_text(dump.read_text())  # the same listings, exported again the next day
    run_scan(ScanOptions(dump=tuesday, out=tmp_path / "scan2", workers=1), settings, service=service)
    archive = ListingArchive.for_service(service)
    try:
        counts = archive.store.counts()
        assert counts["photos"] == 3 and counts["listings"] == 3
        sha = service.decode((dump.parent / "new.jpg").read_bytes()).sha256
        photo_id = archive.store.has_photo(sha)
        [sighting] = archive.listings_of(photo_id)
        assert sighting.listing.listing_id == "L-NEW" and sighting.times_seen == 2
    finally:
        archive.close()

    from app.jobs.watch import FolderWatch

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    for name in ("new.jpg", "old.jpg", "vase.jpg"):
        (inbox / name).write_bytes((dump.parent / name).read_bytes())
    (inbox / "jug.jpg").write_bytes(jpeg_bytes(random_photo(78)))
    rows.append({"listing_id": "L-WED", "platform": "bazaar", "title": "New today", "images": ["jug.jpg"]})
    (inbox / "wednesday.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    watch = FolderWatch(inbox, tmp_path / "watched", settings, service, workers=1, settle_s=0)
    [ready] = watch.ready()
    summary = watch.scan(ready)
    assert summary.skipped_archived == 3 and summary.listings + summary.row_errors <= 1
    assert watch.ready() == []  # a finished dump is not scanned again
    assert Path(tmp_path / "watched").stat().st_mode & 0o077 == 0


def test_a_monitors_search_naming_its_listing_is_archived_and_a_match_is_an_alert(market, coins):
    settings, service, dump = market
    from app.security.keys import KeyStore

    keys = KeyStore(service.store.sessions)
    monitor = keys.create("monitor-key", "monitor").token
    officer = keys.create("officer-key", "officer").token
    photo = (dump.parent / "old.jpg").read_bytes()
    with TestClient(create_app(settings, service=service)) as client:
        # An officer's search of a seized object is not a listing: nothing is archived.
        r = client.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")},
                        data={"listing_id": "X-1"}, headers=bearer(officer))
        assert r.status_code == 200
        r = client.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")},
                        data={"listing_id": "M-77", "platform": "bazaar", "listing_url": "https://bazaar.example/77"},
                        headers=bearer(monitor))
        assert r.status_code == 200 and r.json()["results"][0]["verdict"] == "match"
    archive = ListingArchive.for_service(service)
    try:
        [photo_id] = [archive.store.has_photo(service.decode(photo).sha256)]
        [sighting] = archive.listings_of(photo_id)
        assert (sighting.listing.listing_id, sighting.listing.source) == ("M-77", "api")
        assert archive.search(service.store.vectors_of(service.fingerprint, [1])[1][None, :], 3)  # indexed
    finally:
        archive.close()
    [alert] = AlertStore(service.store.sessions).list()[0]
    assert (alert.source, alert.listing_id, alert.verdict) == ("search", "M-77", "match")
