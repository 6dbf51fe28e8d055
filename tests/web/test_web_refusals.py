"""Every refused web search leaves an audit event with its error code, whoever refused it: the route
(no photo), the key's rate (applied before the photo is read), the size limit, the body parser, the
sign-in check. A form another site sent (no CSRF token of the session) is not the key's search."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from app.main import create_app
from app.security.audit import AuditLog
from tests.conftest import jpeg_bytes, random_photo
from tests.web.test_web import csrf_of, sign_in


def _searches(service) -> list:
    return [e for e in AuditLog(service.store.sessions).events() if e.action == "search"]


def test_refused_web_searches_are_audited_with_their_codes(settings, service, keys):
    limited = create_app(settings.model_copy(update={"rate_limit_per_minute": 6, "rate_limit_burst": 4,
                                                     "max_upload_mb": 0.01}), service=service)
    with TestClient(limited) as client:
        sign_in(client, keys["officer"])
        token = csrf_of(client)
        r = client.post("/search", data={"csrf_token": token})
        assert r.status_code == 422 and "Choose or take a photo first" in r.text
        r = client.post("/search", data={"csrf_token": token}, files={"image": ("", b"", "application/octet-stream")})
        assert r.status_code == 422  # an empty file input, as a browser sends it: not a valid form
        big = b"\xff\xd8" + b"\0" * (2 << 20)  # over the request limit (0.01 MB + 1 MB for the form): cut off
        r = client.post("/search", data={"csrf_token": token}, files={"image": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413
        broken = b"--xyz\r\nContent-Type: text/plain\r\n\r\nabc\r\n--xyz--\r\n"  # a part without its name
        r = client.post("/search", content=broken, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        assert r.status_code == 400
        r = client.post("/search", data={"csrf_token": token},
                        files={"image": ("q.jpg", jpeg_bytes(random_photo(3)), "image/jpeg")})
        assert r.status_code == 429 and "Too many searches" in r.text and int(r.headers["Retry-After"]) >= 1
        r = client.post("/search", data={"csrf_token": token}, headers={"X-HM-Async": "1"},
                        files={"image": ("q.jpg", jpeg_bytes(random_photo(3)), "image/jpeg")})
        assert r.status_code == 429 and "Too many searches" in r.json()["error"]
    assert [(e.key_name, e.role, e.outcome) for e in _searches(service)] == [
        ("officer-key", "officer", "no_photo"), ("officer-key", "officer", "validation_error"),
        ("officer-key", "officer", "image_too_large"),
        ("officer-key", "officer", "bad_request"), ("officer-key", "officer", "rate_limited"),
        ("officer-key", "officer", "rate_limited")]


def test_a_web_search_without_a_session_is_audited_as_unauthenticated(app, service):
    with TestClient(app) as client:
        r = client.post("/search", files={"image": ("q.jpg", b"photo", "image/jpeg")}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/signin"
        r = client.post("/search", files={"image": ("q.jpg", b"photo", "image/jpeg")}, headers={"X-HM-Async": "1"})
        assert r.status_code == 401 and r.json()["redirect"].startswith("/signin")
    events = _searches(service)
    assert [(e.key_name, e.key_id, e.outcome) for e in events] == [("unauthenticated", None, "unauthorized")] * 2
    assert json.loads(events[0].details) == {"client": "testclient"}


def test_a_search_that_ran_has_one_event_and_a_forged_form_none(app, service, keys):
    with TestClient(app) as client:
        sign_in(client, keys["officer"])
        r = client.post("/search", data={"csrf_token": csrf_of(client)},
                        files={"image": ("q.jpg", jpeg_bytes(random_photo(4)), "image/jpeg")}, follow_redirects=False)
        assert r.status_code == 303
        r = client.post("/search", data={"csrf_token": "forged"},
                        files={"image": ("q.jpg", jpeg_bytes(random_photo(4)), "image/jpeg")})
        assert r.status_code == 403
    assert [(e.key_name, e.outcome) for e in _searches(service)] == [("officer-key", "ok")]
