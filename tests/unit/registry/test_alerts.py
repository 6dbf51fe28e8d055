"""Alerts: one per listing photo and artefact, audited when raised and when reviewed, kept when the artefact
goes; webhook endpoints only on public https addresses unless a setting allows others."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket

import pytest

from app.core.errors import NotFound
from app.core.netguard import UnsafeAddress, address_problem, check_public_host, check_public_url
from app.registry.alerts import AlertDraft, AlertStore, WebhookDelivery, WebhookStore, alert_payload
from app.registry.store import NewPhoto, RegistryStore
from app.security.actor import Principal
from app.security.audit import AuditLog, event_dict
from app.security.roles import Role
from tests.conftest import jpeg_bytes, random_photo

REGISTRAR = Principal(key_id=7, name="registrar-amal", role=Role.registrar)


@pytest.fixture
def store(tmp_path):
    s = RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "photos")
    yield s
    s.close()


def _photo(seed: int) -> NewPhoto:
    data = jpeg_bytes(random_photo(seed))
    return NewPhoto(data=data, sha256=hashlib.sha256(data).hexdigest(), format="jpeg", width=320, height=240,
                    vector=None)


@pytest.fixture
def artefact(store):
    return store.create_artefact({"inventory_number": "INV-1", "institution": "Museum", "title": "Bronze coin"},
                                 [_photo(1)], None)


def draft(artefact, **kw) -> AlertDraft:
    fields = dict(artefact_id=artefact.id, registry_photo_id=artefact.photos[0].id, score=0.93, verdict="match",
                  source="scan", evidence={"inliers": 40, "coverage": 0.8, "summary": "40 keypoints agree"},
                  archive_photo_id=11, platform="bazaar", listing_id="L-1", listing_url="https://bazaar.example/l/1",
                  listing_title="Old coin", listing_seller="seller1", listing_price="120 EUR",
                  listing_thumbnail=jpeg_bytes(random_photo(2, size=(64, 48))))
    fields.update(kw)
    return AlertDraft(**fields)


def _events(store, action):
    return [event_dict(e) for e in AuditLog(store.sessions).events() if e.action == action]


def test_the_same_listing_photo_and_artefact_raise_one_alert(store, artefact):
    alerts = AlertStore(store.sessions)
    seen = []
    alerts.on_created(seen.append)
    first, created = alerts.raise_alert(draft(artefact))
    assert created and first.status == "new" and first.inventory_number == "INV-1"
    again, created_again = alerts.raise_alert(draft(artefact, score=0.99, source="retrohunt"))
    assert not created_again and again.id == first.id and again.score == pytest.approx(0.93)
    other, created_other = alerts.raise_alert(draft(artefact, archive_photo_id=12))  # another listing photo
    assert created_other and other.id != first.id
    # The listing photo's SHA-256 identifies it first: the same image seen by a search (no archive id) is the same.
    by_sha = draft(artefact, archive_photo_id=None, listing_photo_sha256="ab" * 32)
    assert alerts.raise_alert(by_sha)[1]
    assert not alerts.raise_alert(draft(artefact, archive_photo_id=77, listing_photo_sha256="AB" * 32))[1]
    assert [a.id for a in seen] == [first.id, other.id, alerts.list()[0][0].id]
    raised = _events(store, "alert.raised")
    assert len(raised) == 3 and raised[0]["artefact_id"] == artefact.id
    assert raised[0]["details"]["alert_id"] == first.id and raised[0]["details"]["listing_id"] == "L-1"
    rows, total = alerts.list("new")
    assert total == 3 and [a.id for a in rows] == sorted((a.id for a in rows), reverse=True)  # newest first
    assert alerts.thumbnail(first.id).startswith(b"\xff\xd8\xff")
    payload = alert_payload(alerts.get(first.id))
    assert payload["evidence"]["summary"] == "40 keypoints agree" and payload["listing"]["seller"] == "seller1"
    assert payload["listing_photo_url"] == f"/v1/alerts/{first.id}/listing-photo"
    json.dumps(payload)  # JSON-ready


def test_status_changes_are_audited_with_who_and_what(store, artefact):
    alerts = AlertStore(store.sessions)
    alert, _ = alerts.raise_alert(draft(artefact))
    changed = alerts.set_status(alert.id, "confirmed", note="Same die flaw", principal=REGISTRAR)
    assert changed.status == "confirmed" and changed.status_changed_by == "registrar-amal"
    assert changed.note == "Same die flaw" and changed.status_changed_at is not None
    alerts.set_status(alert.id, "confirmed", principal=REGISTRAR)  # nothing changes: nothing recorded
    alerts.set_status(alert.id, "dismissed", principal=REGISTRAR)
    events = _events(store, "alert.status")
    assert [e["details"]["changes"]["status"] for e in events] == [
        {"from": "new", "to": "confirmed"}, {"from": "confirmed", "to": "dismissed"}]
    assert events[0]["key_name"] == "registrar-amal" and events[0]["role"] == "registrar"
    assert events[0]["details"]["changes"]["note"] == {"from": None, "to": "Same die flaw"}
    assert alerts.get(alert.id).note == "Same die flaw"  # kept when not sent again
    with pytest.raises(ValueError):
        alerts.set_status(alert.id, "archived")
    with pytest.raises(NotFound):
        alerts.set_status(999, "confirmed")


def test_an_alert_outlives_its_artefact(store, artefact):
    alerts = AlertStore(store.sessions)
    alert, _ = alerts.raise_alert(draft(artefact))
    store.delete_artefact(artefact.id)
    kept = alerts.get(alert.id)
    assert kept.artefact_id is None and kept.registry_photo_id is None
    assert kept.artefact_ref == artefact.id and kept.inventory_number == "INV-1"
    assert kept.artefact_title == "Bronze coin"
    assert alert_payload(kept)["artefact"]["exists"] is False
    with pytest.raises(NotFound):  # no new alert for an artefact that is gone
        alerts.raise_alert(draft(artefact, archive_photo_id=99))


def test_drafts_no_alert_can_come_from_are_refused(store, artefact):
    alerts = AlertStore(store.sessions)
    for bad in (draft(artefact, verdict="no_match"), draft(artefact, source="guess"),
                draft(artefact, listing_thumbnail=b"\x89PNG not a jpeg")):
        with pytest.raises(ValueError):
            alerts.raise_alert(bad)
    # Hostile, endless listing text is kept, clipped.
    alert, _ = alerts.raise_alert(draft(artefact, listing_title="x" * 10_000, listing_thumbnail=None))
    assert len(alerts.get(alert.id).listing_title) == 2000 and alerts.thumbnail(alert.id) is None
    # A registry photo that is not the artefact's is not pointed at.
    other = store.create_artefact({"inventory_number": "INV-2"}, [_photo(3)], None)
    stray, _ = alerts.raise_alert(draft(artefact, archive_photo_id=5, registry_photo_id=other.photos[0].id))
    assert stray.registry_photo_id is None


def test_new_alerts_queue_one_delivery_per_active_endpoint(store, artefact):
    hooks = WebhookStore(store.sessions, allow_private=True)
    first = hooks.add("http://127.0.0.1:9/hook")
    second = hooks.add("http://127.0.0.1:9/other", secret="a-secret-of-my-own")
    assert first.secret.startswith("whsec_") and len(first.secret) > 40 and second.secret == "a-secret-of-my-own"
    hooks.remove(second.endpoint.id)
    alerts = AlertStore(store.sessions)
    alert, _ = alerts.raise_alert(draft(artefact))
    rows, total = hooks.deliveries()
    assert total == 1 and rows[0].endpoint_id == first.endpoint.id and rows[0].alert_id == alert.id
    assert rows[0].status == "pending" and len(rows[0].idempotency_key) == 32
    body = json.loads(rows[0].payload)
    assert body["event"] == "alert.created" and body["alert"]["id"] == alert.id
    alerts.raise_alert(draft(artefact))  # the same alert again: no second delivery
    assert hooks.deliveries()[1] == 1
    # Removing an endpoint gives up its pending deliveries; the log stays.
    hooks.remove(first.endpoint.id)
    with store.sessions() as s:
        d = s.get(WebhookDelivery, rows[0].id)
        assert d.status == "failed" and d.last_error == "endpoint removed"
    actions = [e.action for e in AuditLog(store.sessions).events() if e.action.startswith("webhook.")]
    assert actions == ["webhook.create", "webhook.create", "webhook.remove", "webhook.remove"]
    assert all("secret" not in json.dumps(e["details"]) for e in _events(store, "webhook.create"))
    with pytest.raises(NotFound):
        hooks.deliveries(endpoint_id=999)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook",  # plain http, and loopback
    "https://127.0.0.1/hook",
    "https://10.0.0.1/hook",  # private
    "https://localhost/hook",  # a name that resolves to loopback
    "https://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
    "https://[::ffff:127.0.0.1]/hook",  # IPv4-mapped IPv6
    "https://[::1]/hook",
    "https://0.0.0.0/hook",
    "https://0x7f.1/hook",  # 127.0.0.1 spelled otherwise
    "https://user:pass@example.com/hook",
    "ftp://example.com/hook",
    "javascript:alert(1)",
])
def test_webhook_endpoints_must_be_public_https(store, url):
    with pytest.raises(UnsafeAddress):
        WebhookStore(store.sessions).add(url)
    assert WebhookStore(store.sessions).list() == []


def test_every_address_a_name_resolves_to_is_checked(monkeypatch):
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443)),
               (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:10.1.2.3", 443, 0, 0))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **kw: answers)
    with pytest.raises(UnsafeAddress, match="private"):
        check_public_host("mixed.example", 443)
    assert check_public_host("mixed.example", 443, allow_private=True) == ["93.184.216.34", "::ffff:10.1.2.3"]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **kw: answers[:1])
    checked = check_public_url("https://public.example:8443/hook?x=1")
    assert checked.addresses == ("93.184.216.34",) and checked.port == 8443 and checked.target == "/hook?x=1"


@pytest.mark.parametrize("address,problem", [
    ("127.0.0.1", "loopback"), ("10.0.0.1", "private"), ("192.168.1.1", "private"), ("172.16.0.1", "private"),
    ("169.254.169.254", "link-local"), ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"),
    ("100.64.0.1", "not public"), ("::1", "loopback"), ("fe80::1", "link-local"), ("fc00::1", "private"),
    ("::ffff:192.168.0.1", "private"), ("64:ff9b::a00:1", "private"), ("2002:7f00:1::", "loopback"),
    ("8.8.8.8", None), ("2606:4700:4700::1111", None),
])
def test_address_classes(address, problem):
    assert address_problem(ipaddress.ip_address(address)) == problem
