"""/v1/alerts and /v1/webhooks: who may call them, review audited, errors in the envelope, SSRF refused."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient

from app.registry.alerts import AlertDraft, AlertStore
from app.security.audit import AuditLog, event_dict
from app.service import PhotoInput
from tests.conftest import ROLES, bearer, jpeg_bytes, random_photo

REVIEWERS = {"admin", "registrar"}


@pytest.fixture
def alert(service):
    art = service.register_artefact({"inventory_number": "AL-1", "title": "Stele"},
                                    [PhotoInput(jpeg_bytes(random_photo(31)))])
    created, _ = AlertStore(service.store.sessions).raise_alert(AlertDraft(
        artefact_id=art.id, registry_photo_id=art.photos[0].id, score=0.91, verdict="match", source="scan",
        evidence={"inliers": 33, "coverage": 0.7, "summary": "33 keypoints agree"}, archive_photo_id=4,
        platform="bazaar", listing_id="B-9", listing_url="https://bazaar.example/9", listing_title="Old stele",
        listing_seller="dealer", listing_price="900 USD",
        listing_thumbnail=jpeg_bytes(random_photo(32, size=(64, 64)))))
    return created


def _requests(client: TestClient, alert_id: int) -> dict:
    return {
        "list": client.get("/v1/alerts"),
        "get": client.get(f"/v1/alerts/{alert_id}"),
        "photo": client.get(f"/v1/alerts/{alert_id}/listing-photo"),
        "patch": client.patch(f"/v1/alerts/{alert_id}", json={"status": "new"}),
        "hooks": client.get("/v1/webhooks"),
        "add-hook": client.post("/v1/webhooks", json={"url": "ftp://nowhere.example/"}),  # 422 once allowed
    }


@pytest.mark.parametrize("role", ROLES)
def test_alerts_are_for_registrars_and_admins_webhooks_for_admins(role, app, keys, alert):
    with TestClient(app, headers=bearer(keys[role])) as client:
        answers = _requests(client, alert.id)
    for name, r in answers.items():
        allowed = {"admin"} if name in ("hooks", "add-hook") else REVIEWERS
        if role in allowed:
            assert r.status_code == (422 if name == "add-hook" else 200), (name, role, r.text)
        else:
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (name, role)
    with TestClient(app) as anonymous:
        assert all(r.status_code == 401 for r in _requests(anonymous, alert.id).values())


def test_alerts_are_listed_read_and_reviewed_with_an_audit(app, keys, service, alert):
    with TestClient(app, headers=bearer(keys["registrar"])) as client:
        page = client.get("/v1/alerts", params={"status": "new"}).json()
        assert page["total"] == 1 and page["items"][0]["id"] == alert.id
        one = client.get(f"/v1/alerts/{alert.id}").json()
        assert one["listing"]["url"] == "https://bazaar.example/9" and one["artefact"]["inventory_number"] == "AL-1"
        assert one["evidence"]["summary"] == "33 keypoints agree" and one["verdict"] == "match"
        assert one["created_at"].endswith("Z") or one["created_at"].endswith("+00:00")
        photo = client.get(one["listing_photo_url"])
        assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
        assert photo.content.startswith(b"\xff\xd8\xff") and photo.headers["cache-control"] == "no-store"
        r = client.patch(f"/v1/alerts/{alert.id}", json={"status": "confirmed", "note": "Same crack"})
        assert r.status_code == 200
        assert r.json()["status"] == "confirmed" and r.json()["status_changed_by"] == "registrar-key"
        assert client.get("/v1/alerts", params={"status": "new"}).json()["total"] == 0
        assert client.get("/v1/alerts", params={"status": "confirmed"}).json()["total"] == 1
        # Errors in the envelope.
        bad = client.patch(f"/v1/alerts/{alert.id}", json={"status": "archived"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
        extra = client.patch(f"/v1/alerts/{alert.id}", json={"status": "new", "owner": "x"})
        assert extra.status_code == 422
        missing = client.patch("/v1/alerts/987654", json={"status": "dismissed"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.get("/v1/alerts/0").status_code == 422
        assert client.get("/v1/alerts", params={"status": "maybe"}).status_code == 422
    [event] = [event_dict(e) for e in AuditLog(service.store.sessions).events() if e.action == "alert.status"]
    assert event["key_name"] == "registrar-key" and event["role"] == "registrar"
    assert event["details"]["changes"]["status"] == {"from": "new", "to": "confirmed"}


def test_webhook_endpoints_refuse_non_public_addresses(app, keys):
    with TestClient(app, headers=bearer(keys["admin"])) as client:
        for url in ("http://127.0.0.1:8080/hook", "https://10.0.0.1/hook", "https://localhost/hook",
                    "https://[::ffff:127.0.0.1]/hook", "https://169.254.169.254/"):
            r = client.post("/v1/webhooks", json={"url": url})
            assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_address", (url, r.text)
        assert client.get("/v1/webhooks").json() == []


def test_webhook_endpoints_show_their_secret_once_and_log_deliveries(app, keys, service, monkeypatch):
    real = socket.getaddrinfo

    def resolve(host, *args, **kw):  # a public address for the test's name, no network needed
        if host == "hooks.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))]
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with TestClient(app, headers=bearer(keys["admin"])) as client:
        app.state.webhook_dispatcher.stop()  # nothing is sent to that address: the log is read as queued
        r = client.post("/v1/webhooks", json={"url": "https://hooks.example/heritage"})
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["secret"].startswith("whsec_") and created["created_by"] == "admin-key"
        listed = client.get("/v1/webhooks").json()
        assert [h["id"] for h in listed] == [created["id"]] and "secret" not in listed[0]
        art = service.register_artefact({"inventory_number": "WH-1"}, [])
        AlertStore(service.store.sessions).raise_alert(AlertDraft(
            artefact_id=art.id, score=0.7, verdict="possible", source="search", listing_id="S-1"))
        log = client.get(f"/v1/webhooks/{created['id']}/deliveries").json()
        assert log["total"] == 1 and log["items"][0]["status"] in ("pending", "failed")
        assert len(log["items"][0]["idempotency_key"]) == 32
        gone = client.delete(f"/v1/webhooks/{created['id']}")
        assert gone.status_code == 200 and gone.json()["active"] is False
        assert client.get(f"/v1/webhooks/{created['id']}/deliveries").json()["items"][0]["status"] == "failed"
        assert client.delete("/v1/webhooks/987654").json()["error"]["code"] == "not_found"
        assert client.get("/v1/webhooks/987654/deliveries").status_code == 404


def test_alerts_and_webhooks_are_in_the_openapi_schema(app):
    with TestClient(app) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert {"get"} <= set(paths["/v1/alerts"]) and {"get", "patch"} <= set(paths["/v1/alerts/{alert_id}"])
    assert "image/jpeg" in paths["/v1/alerts/{alert_id}/listing-photo"]["get"]["responses"]["200"]["content"]
    assert {"get", "post"} <= set(paths["/v1/webhooks"]) and "delete" in paths["/v1/webhooks/{webhook_id}"]
    assert "get" in paths["/v1/webhooks/{webhook_id}/deliveries"]
