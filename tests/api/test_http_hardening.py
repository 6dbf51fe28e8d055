"""Security headers on every response, CORS off unless configured."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import bearer

ORIGIN = "https://registry.example.org"


@pytest.fixture
def client(settings, service, make_key):
    with TestClient(create_app(settings, service=service), headers=bearer(make_key("admin"))) as c:
        yield c


def _assert_hardened(r):
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


def test_every_kind_of_response_carries_security_headers(client):
    for r in (client.get("/v1/artefacts"), client.get("/healthz"), client.get("/v1/artefacts/404"),
              client.get("/v1/artefacts", headers={"Authorization": "Bearer nope"}), client.get("/openapi.json")):
        _assert_hardened(r)
    api = client.get("/v1/artefacts")
    assert api.headers["Cache-Control"] == "no-store"  # case material stays out of caches
    assert api.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_html_docs_get_a_content_security_policy(client):
    r = client.get("/docs")
    assert r.headers["content-type"].startswith("text/html")
    _assert_hardened(r)
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "object-src 'none'" in csp and "base-uri 'none'" in csp


def test_cors_is_off_by_default(client):
    preflight = client.options("/v1/search", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    r = client.get("/v1/artefacts", headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(settings, service, make_key):
    app = create_app(settings.model_copy(update={"cors_origins": f"{ORIGIN}, https://other.example.org"}),
                     service=service)
    with TestClient(app, headers=bearer(make_key("officer"))) as c:
        ok = c.options("/v1/search", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "authorization"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
        bad = c.options("/v1/search", headers={"Origin": "https://evil.example",
                                               "Access-Control-Request-Method": "POST"})
        assert bad.headers.get("access-control-allow-origin") != "https://evil.example"
        r = c.get("/healthz", headers={"Origin": ORIGIN})
        assert r.headers["access-control-allow-origin"] == ORIGIN
        _assert_hardened(r)


def test_an_unexpected_error_is_answered_with_the_security_headers(settings, service, make_key, monkeypatch):
    from app.service import PhotoInput
    from tests.conftest import jpeg_bytes, random_photo

    art = service.register_artefact({"inventory_number": "E-1"}, [PhotoInput(jpeg_bytes(random_photo(1)))])
    photo_id = art.photos[0].id

    def lost(*_):
        raise RuntimeError("the photo store is gone")

    monkeypatch.setattr(service.store.photos, "read", lost)
    app = create_app(settings, service=service)
    with TestClient(app, headers=bearer(make_key("admin")), raise_server_exceptions=False) as c:
        r = c.get(f"/v1/photos/{photo_id}")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    _assert_hardened(r)
    assert r.headers["Cache-Control"] == "no-store"
    assert "photo store is gone" not in r.text  # the details go to the log, not to the client
