"""Refusals before a byte of the body is read, every refused API search in the audit trail, and the
proxy setting as `serve` applies it.

Uploads to the web forms and the API are refused from their headers alone (no key, no signed-in
session, a role that may not upload there): the ASGI ``receive`` is never called, and a real uvicorn
server answers before the client has sent any of the body it announced.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient

from app.cli.serve import server_options
from app.http.middleware import UNAUTHENTICATED_BODY_LIMIT, BodySizeLimit
from app.main import create_app
from app.security.actor import Principal
from app.security.audit import AuditLog
from app.security.keys import KeyStore
from app.security.roles import Role
from app.service import PhotoInput
from app.web.session import COOKIE, WebSession
from tests.conftest import bearer, jpeg_bytes, random_photo

BOUNDARY = b"hm-boundary"
MULTIPART = b"multipart/form-data; boundary=" + BOUNDARY
HUGE = 150 * 1024 * 1024  # what the hostile review sent


@pytest.fixture
def artefact_id(service) -> int:
    return service.register_artefact({"inventory_number": "EARLY-1"}, [PhotoInput(jpeg_bytes(random_photo(5)))]).id


@pytest.fixture
def created(service):
    """role -> CreatedKey (its token and its row's id)."""
    store = KeyStore(service.store.sessions)
    return {role.value: store.create(f"{role.value}-key", role) for role in Role}


def session_cookie(app, key_id: int | None, session: WebSession | None = None) -> str:
    """A signed session cookie as the sign-in page writes it."""
    session = session or (WebSession.signed_in(key_id) if key_id is not None else WebSession.anonymous())
    value = app.state.web_sessions.serializer.dumps({"s": session.sid, "c": session.csrf, "k": session.key_id})
    return f"{COOKIE}={value}"


async def _post(app, path: str, headers: list[tuple[bytes, bytes]], chunks: int = 256, chunk_size: int = 64 * 1024):
    """POST a chunked multipart body of ``chunks`` chunks to the ASGI app; returns the status, the response's
    headers, its body and the body bytes the app pulled through ``receive``."""
    head = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    chunk = b"\0" * chunk_size
    calls = 0
    pulled = 0

    async def receive():
        nonlocal calls, pulled
        calls += 1
        body = head if calls == 1 else chunk
        pulled += len(body)
        return {"type": "http.request", "body": body, "more_body": calls <= chunks}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
             "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
             "headers": [(b"host", b"testserver"), (b"content-type", MULTIPART), (b"transfer-encoding", b"chunked"),
                         *headers],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80), "state": {}, "app": app}
    await asyncio.wait_for(app(scope, receive, send), timeout=60)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body, pulled


def _cookie(value: str) -> tuple[bytes, bytes]:
    return (b"cookie", value.encode())


def test_uploads_without_a_session_or_key_are_refused_before_any_body_is_read(app, service, created, artefact_id):
    with TestClient(app):  # runs the start-up (keys, audit)
        cases = [
            ("/registry/new", [], 303),
            (f"/registry/{artefact_id}/photos", [], 303),
            (f"/registry/{artefact_id}", [], 303),
            ("/search", [], 303),
            ("/search", [(b"x-hm-async", b"1")], 401),  # app.js: told where to sign in, as JSON
            ("/search", [_cookie(session_cookie(app, None))], 303),  # a session, never signed in
            ("/search", [_cookie(session_cookie(app, created["officer"].key.id) + "x")], 303),  # tampered
            ("/v1/search", [], 401),
            ("/v1/search", [(b"authorization", b"Bearer hm_not-a-key")], 401),
            (f"/v1/artefacts/{artefact_id}/photos", [], 401),
        ]
        for path, headers, status in cases:
            got, response_headers, _, pulled = asyncio.run(_post(app, path, headers))
            assert got == status, (path, headers, got)
            assert pulled == 0, f"{path}: {pulled} bytes read before the refusal"
            assert response_headers["connection"] == "close", path
            if status == 303:
                assert response_headers["location"] == "/signin"


def test_a_signed_out_or_revoked_session_is_refused_before_the_body(app, service, created):
    with TestClient(app):
        officer = WebSession.signed_in(created["officer"].key.id)
        app.state.web_searches.end_session(officer.sid, 3600)  # signed out: a copy of its cookie is refused
        status, _, _, pulled = asyncio.run(_post(app, "/search", [_cookie(session_cookie(app, None, officer))]))
        assert (status, pulled) == (303, 0)
        KeyStore(service.store.sessions).revoke(created["monitor"].key.id)
        monitor = session_cookie(app, created["monitor"].key.id)
        status, _, _, pulled = asyncio.run(_post(app, "/search", [_cookie(monitor)]))
        assert (status, pulled) == (303, 0)


def test_a_role_that_may_not_upload_there_is_refused_before_the_body(app, created, artefact_id):
    with TestClient(app):
        for role in ("officer", "monitor"):
            cookie = [_cookie(session_cookie(app, created[role].key.id))]
            for path in ("/registry/new", f"/registry/{artefact_id}/photos", f"/registry/{artefact_id}"):
                status, headers, _, pulled = asyncio.run(_post(app, path, cookie))
                assert (status, pulled) == (403, 0), (role, path)
                assert headers["connection"] == "close"
            key = [(b"authorization", f"Bearer {created[role].token}".encode())]
            for path in (f"/v1/artefacts/{artefact_id}/photos", "/v1/artefacts", "/v1/keys"):
                status, _, body, pulled = asyncio.run(_post(app, path, key))
                assert (status, pulled) == (403, 0), (role, path)
                assert b'"forbidden"' in body


def test_an_allowed_session_or_key_is_read_as_before(app, created, artefact_id):
    """The control: the same requests from a role that may send them are read (and refused only for what
    they carry), so the zeros above are the refusals' doing."""
    with TestClient(app):
        cookie = [_cookie(session_cookie(app, created["registrar"].key.id))]
        status, _, _, pulled = asyncio.run(_post(app, f"/registry/{artefact_id}/photos", cookie, chunks=4))
        assert pulled > 4 * 64 * 1024 and status == 403  # read in full, then refused for its missing CSRF token
        key = [(b"authorization", f"Bearer {created['officer'].token}".encode())]
        status, _, _, pulled = asyncio.run(_post(app, "/v1/search", key, chunks=4))
        assert pulled > 4 * 64 * 1024 and status == 422  # read in full: the unfinished part is no file


def test_a_request_from_no_one_is_read_at_most_the_sign_in_form(app):
    with TestClient(app):
        status, headers, _, pulled = asyncio.run(_post(app, "/signin", [], chunks=64, chunk_size=16 * 1024))
    assert status == 413 and headers["connection"] == "close"
    assert pulled <= UNAUTHENTICATED_BODY_LIMIT + 16 * 1024 + 1024


def test_the_several_photo_limit_is_for_roles_that_may_write_the_registry():
    limits = BodySizeLimit(None, limit=10, limit_mb=1, multi_limit=20, multi_limit_mb=2,
                           multi_paths=(r"/v1/artefacts/\d+/photos", r"/registry/new"))

    def limit_for(path: str, role: Role | None) -> int:
        state = {"principal": Principal(1, "k", role)} if role is not None else {}
        return limits.limits({"path": path, "state": state})[0]

    assert limit_for("/registry/new", Role.registrar) == limit_for("/v1/artefacts/3/photos", Role.admin) == 20
    assert limit_for("/registry/new", Role.officer) == limit_for("/v1/artefacts/3/photos", Role.monitor) == 10
    assert limit_for("/v1/search", Role.admin) == 10
    assert limit_for("/registry/new", None) == limit_for("/signin", None) == UNAUTHENTICATED_BODY_LIMIT


# --- a real server -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app, settings) -> Iterator[str]:
    """uvicorn serving ``app`` with the options ``heritage-match serve`` gives it; yields its URL."""
    import uvicorn

    port = free_port()
    options = {**server_options(settings, "127.0.0.1", port), "log_level": "warning", "lifespan": "on"}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _announce(url: str, path: str, length: int, headers: dict[str, str], wait_s: float) -> bytes | None:
    """Send a POST's headers announcing ``length`` body bytes, and none of the body; the answer the server
    sends within ``wait_s`` (read to the end: the server closes the connection), or None."""
    port = int(url.rsplit(":", 1)[1])
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {length}",
             f"Content-Type: {MULTIPART.decode()}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except socket.timeout:
            return answer or None
        return answer


@pytest.mark.timeout(120)
def test_a_real_server_answers_before_the_client_sends_any_of_the_body(settings, service, created, artefact_id):
    app = create_app(settings, service=service)
    with serving(app, settings) as url:
        officer = session_cookie(app, created["officer"].key.id)
        for path, headers, status in [
            ("/registry/new", {}, b"303"),
            (f"/registry/{artefact_id}/photos", {}, b"303"),
            ("/search", {}, b"303"),
            ("/v1/search", {}, b"401"),
            ("/registry/new", {"Cookie": officer}, b"403"),  # signed in, but an officer may not register
        ]:
            answer = _announce(url, path, HUGE, headers, wait_s=10)
            assert answer is not None, f"{path}: no answer without the body"
            head = answer.split(b"\r\n\r\n", 1)[0].lower()
            assert head.startswith(b"http/1.1 " + status), (path, head)
            assert b"connection: close" in head, path  # and the server closed it: the recv loop ended
        # The control: a search from a signed-in session is read, so the server waits for its body.
        assert _announce(url, "/search", 1 << 20, {"Cookie": officer}, wait_s=1.5) is None


# --- every refused API search in the audit trail -----------------------------------------------------------


def _searches(service) -> list[tuple[str, str]]:
    return [(e.key_name, e.outcome) for e in AuditLog(service.store.sessions).events() if e.action == "search"]


def test_every_refused_api_search_is_audited_with_its_code(settings, service, created):
    limited = create_app(settings.model_copy(update={"rate_limit_per_minute": 6, "rate_limit_burst": 2}),
                         service=service)
    officer = bearer(created["officer"].token)
    photo = {"image": ("q.jpg", jpeg_bytes(random_photo(9)), "image/jpeg")}
    with TestClient(limited) as client:
        broken = b"--xyz\r\nContent-Type: text/plain\r\n\r\nabc\r\n--xyz--\r\n"  # a part without its name
        r = client.post("/v1/search", content=broken, headers={**officer,
                                                               "Content-Type": "multipart/form-data; boundary=xyz"})
        assert r.status_code == 400
        r = client.post("/v1/search", headers=officer, data={f"f{n}": "x" for n in range(1001)}, files=photo)
        assert r.status_code == 400 and "fields" in r.json()["error"]["message"]
        r = client.post("/v1/search", headers=officer, files=photo)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert _searches(service) == [("officer-key", "bad_request"), ("officer-key", "bad_request"),
                                  ("officer-key", "rate_limited")]


def test_searches_refused_before_a_key_is_known_are_audited_per_address(settings, service, created):
    guarded = create_app(settings.model_copy(update={"auth_failures_per_minute": 6, "auth_failures_burst": 3}),
                         service=service)
    photo = {"image": ("q.jpg", b"x", "image/jpeg")}
    with TestClient(guarded) as client:
        codes = [client.post("/v1/search", headers=bearer(f"hm_guess{n}"), files=photo).status_code for n in range(3)]
        assert codes == [401, 401, 401]
        r = client.post("/v1/search", headers=bearer(created["officer"].token), files=photo)  # the address waits
        assert r.status_code == 429
        for _ in range(5):  # flooding adds no more events than the wrong-key allowance: the disk stays bounded
            assert client.post("/v1/search", headers=bearer("hm_more"), files=photo).status_code == 429
    events = [e for e in AuditLog(service.store.sessions).events() if e.action == "search"]
    assert [(e.key_name, e.key_id, e.outcome) for e in events] == [("unauthenticated", None, "unauthorized")] * 3
    assert all('"client": "testclient"' in (e.details or "") for e in events)
    assert not any(e.outcome == "rate_limited" for e in events)  # the allowance was spent by the guesses

    # With room for them, the wrong-key limit's 429 and a request with no key are each recorded.
    roomy = create_app(settings.model_copy(update={"auth_failures_per_minute": 6, "auth_failures_burst": 2}),
                       service=service)
    before = len(_searches(service))
    limiter = roomy.state.auth_failures
    with TestClient(roomy) as client:
        assert client.post("/v1/search", files=photo).status_code == 401  # no key: not a guess
        limiter.check("testclient"), limiter.check("testclient")  # the address has spent its guesses
        assert client.post("/v1/search", headers=bearer("hm_x"), files=photo).status_code == 429
    assert _searches(service)[before:] == [("unauthenticated", "unauthorized"), ("unauthenticated", "rate_limited")]


# --- the proxy setting -------------------------------------------------------------------------------------


def _guess_then_try(url: str, good_key: str) -> tuple[list[int], int, int]:
    """A guesser behind the proxy sends wrong keys until refused; then another client behind the same proxy
    sends a wrong key, then a right one."""
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        def get(forwarded: str, key: str) -> int:
            return client.get("/v1/artefacts", headers={**bearer(key), "X-Forwarded-For": forwarded}).status_code

        guesser = [get("203.0.113.7", f"hm_guess{n}") for n in range(4)]
        # The proxy appends the address it saw: a forged one put before it changes nothing.
        guesser.append(get("198.51.100.2, 203.0.113.7", "hm_guess-again"))
        return guesser, get("198.51.100.2", "hm_typo"), get("198.51.100.2", good_key)


@pytest.mark.timeout(120)
def test_forwarded_allow_ips_makes_the_wrong_key_limit_per_client_behind_a_local_proxy(settings, service, created):
    limited = {"auth_failures_per_minute": 6, "auth_failures_burst": 3}
    behind_proxy = settings.model_copy(update={**limited, "forwarded_allow_ips": "127.0.0.1"})
    with serving(create_app(behind_proxy, service=service), behind_proxy) as url:
        guesser, typo, good = _guess_then_try(url, created["registrar"].token)
    assert guesser == [401, 401, 401, 429, 429]
    assert (typo, good) == (401, 200), "a guesser behind the proxy locked out another of its clients"

    # Without the setting X-Forwarded-For is not believed: the limit is per connection address (here every
    # request's: 127.0.0.1), so a client cannot pick an address to dodge it.
    direct = settings.model_copy(update=limited)
    with serving(create_app(direct, service=service), direct) as url:
        guesser, typo, good = _guess_then_try(url, created["registrar"].token)
    assert guesser == [401, 401, 401, 429, 429]
    assert (typo, good) == (429, 429)
