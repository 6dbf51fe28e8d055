"""Hostile and broken input through POST /v1/search and photo upload: the documented 4xx with a
clear message, or a correct answer for a real photo; never a 500, never a hang."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

import app.pipeline.decode as decode
from app.core.config import Settings
from app.main import create_app
from app.pipeline.decode_limits import LARGE_DECODES, DecodeLimits
from app.schemas import PhotoOut, SearchResponse
from app.security.keys import KeyStore
from app.service import MatchingService, PhotoInput
from tests.conftest import bearer, jpeg_bytes, random_photo
from tests.hostile_files import Hostile, corpus

REFERENCE = random_photo(40)
CORPUS = corpus(REFERENCE)
SLOW_S = 20  # far above any honest request here; a hang fails the test, and the timeout stops it


def _app(tmp_path_factory, encoder, **overrides):
    settings = Settings(data_dir=tmp_path_factory.mktemp("hostile") / "data", model="efficientnet-lite0",
                        device="cpu", rate_limit_per_minute=0, auth_failures_per_minute=0, **overrides)
    service = MatchingService(settings, encoder=encoder).start()
    reference = service.register_artefact({"inventory_number": "REF-1"}, [PhotoInput(jpeg_bytes(REFERENCE, 95))])
    for seed in (41, 42, 43):
        service.register_artefact({"inventory_number": f"OTHER-{seed}"}, [PhotoInput(jpeg_bytes(random_photo(seed)))])
    token = KeyStore(service.store.sessions).create("admin", "admin").token
    return create_app(settings, service=service), service, reference.id, token


@pytest.fixture(scope="module")
def api(tmp_path_factory, encoder):
    app, service, ref_id, token = _app(tmp_path_factory, encoder)
    with TestClient(app, headers=bearer(token)) as client:
        yield client, service, ref_id
    service.close()


def _post_file(client, url: str, h: Hostile):
    t0 = time.monotonic()
    r = client.post(url, files={"image": (h.filename, h.data, h.content_type)})
    assert time.monotonic() - t0 < SLOW_S, f"{h.name} took too long"
    return r


def _assert_error(r, h: Hostile):
    assert r.status_code == h.status, (h.name, r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == h.code and len(err["message"]) > 15, (h.name, err)


def test_the_corpus_has_at_least_25_kinds():
    assert len({h.name for h in CORPUS}) == len(CORPUS) >= 25


@pytest.mark.timeout(120)
@pytest.mark.parametrize("h", CORPUS, ids=[h.name for h in CORPUS])
def test_search_answers_hostile_files(api, h):
    client, service, ref_id = api
    r = _post_file(client, "/v1/search", h)
    if h.status != 200:
        return _assert_error(r, h)
    assert r.status_code == 200, (h.name, r.text)
    body = SearchResponse.model_validate(r.json())
    if h.finds:
        assert body.results and body.results[0].artefact_id == ref_id, (h.name, body.results[:1])
        assert (body.query.width, body.query.height) == REFERENCE.size  # EXIF orientation applied


@pytest.mark.timeout(120)
@pytest.mark.parametrize("h", CORPUS, ids=[h.name for h in CORPUS])
def test_photo_upload_answers_hostile_files(api, h):
    client, service, _ = api
    art = client.post("/v1/artefacts", json={"inventory_number": f"UP-{h.name}"}).json()
    r = _post_file(client, f"/v1/artefacts/{art['id']}/photos", h)
    if h.status != 200:
        _assert_error(r, h)
        assert client.get(f"/v1/artefacts/{art['id']}").json()["photos"] == []  # nothing half-stored
        return
    assert r.status_code == 201, (h.name, r.text)
    photo = PhotoOut.model_validate(r.json()[0])
    assert photo.indexed
    # Stored under its content address whatever the file was called: never a path from the upload.
    path = service.store.photos.path_for(photo.sha256, photo.format)
    assert path.is_file() and path.parent.parent == service.store.photos.root
    assert path.name.startswith(photo.sha256)
    # Served back as the image type it was decoded as, never sniffed, never able to run (polyglots).
    served = client.get(photo.url)
    assert served.headers["content-type"].startswith("image/") and served.content == h.data
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in served.headers["Content-Security-Policy"]


@pytest.mark.timeout(60)
def test_a_large_decode_kept_waiting_is_refused_with_503_and_retry_after(tmp_path_factory, encoder, monkeypatch):
    """At most HM_LARGE_DECODES large decodes run at once in a process; one kept waiting longer than
    HM_LARGE_DECODE_WAIT_S is refused with 503 and Retry-After instead of queueing without end."""
    # A 320x240 query counts as large here, whether the decoder gets its limits from the service's
    # settings or from the process's.
    overrides = {"large_decode_pixels": 10_000, "large_decodes": 1, "large_decode_wait_s": 0.3}
    monkeypatch.setattr(decode, "default_limits", lambda: DecodeLimits(large_pixels=10_000, large_decodes=1,
                                                                       wait_s=0.3))
    app, service, ref_id, token = _app(tmp_path_factory, encoder, **overrides)
    query = {"image": ("q.jpg", jpeg_bytes(REFERENCE, 95), "image/jpeg")}
    with TestClient(app, headers=bearer(token)) as client:
        with LARGE_DECODES.slot(1, 1):  # another large decode holds the only slot
            t0 = time.monotonic()
            r = client.post("/v1/search", files=query)
            waited = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "server_busy" and "large images" in r.json()["error"]["message"]
        assert r.headers.get("Retry-After") == "1"
        assert 0.3 <= waited < 5
        r = client.post("/v1/search", files=query)  # the slot is free: the same search is answered
        assert r.status_code == 200 and r.json()["results"][0]["artefact_id"] == ref_id
    service.close()


def test_path_traversal_file_name_writes_nothing_outside_the_photo_store(api, tmp_path):
    client, service, _ = api
    root = service.settings.data_dir.resolve()
    before = {p for p in root.parent.rglob("*")}
    art = client.post("/v1/artefacts", json={"inventory_number": "TRAVERSAL"}).json()
    data = jpeg_bytes(random_photo(77))
    r = client.post(f"/v1/artefacts/{art['id']}/photos",
                    files={"image": ("../../../../../tmp/evil.jpg", data, "image/jpeg")})
    assert r.status_code == 201
    new = {p for p in root.parent.rglob("*")} - before
    assert all(str(p.resolve()).startswith(str(service.store.photos.root.resolve())) or p.name.startswith(".")
               or p.suffix in (".faiss", ".json", ".db-wal", ".db-shm", ".db") for p in new), new
    assert not any("evil" in str(p) for p in root.rglob("*"))


@pytest.mark.parametrize("url", ["/v1/search", "/v1/artefacts/{id}/photos"])
def test_a_json_body_or_a_url_where_a_file_is_expected(api, url):
    client, _, ref_id = api
    url = url.format(id=ref_id)
    with _listener() as hits:
        target = f"http://127.0.0.1:{hits.port}/photo.jpg"
        for r in (client.post(url, json={"image": target}),
                  client.post(url, data={"image": target}),  # a form text field, not a file
                  client.post(url, data={"top_k": "3"}),  # no image at all
                  client.post(url, content=b"--xyz\r\nbroken",
                              headers={"Content-Type": "multipart/form-data; boundary=xyz"})):
            assert r.status_code in (400, 422), r.text
            assert r.json()["error"]["message"]
        time.sleep(0.2)
        assert hits.count == 0, "the server fetched a URL it was given"


@pytest.mark.parametrize("top_k", ["0", "101", "abc", "-1", "1e9"])
def test_bad_top_k_is_a_validation_error(api, top_k):
    client, _, _ = api
    r = client.post("/v1/search", files={"image": ("q.jpg", jpeg_bytes(REFERENCE), "image/jpeg")},
                    data={"top_k": top_k})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/v1/search", "/v1/artefacts/1/photos"])
def test_upload_over_the_limit_is_refused_while_streaming(tmp_path_factory, encoder, path):
    """A chunked upload with no Content-Length: reading stops just past the limit, so a huge body is
    neither held in memory nor spooled to disk."""
    app, service, _, token = _app(tmp_path_factory, encoder, max_upload_mb=1, max_request_mb=2)
    chunk = b"\xff\xd8" + b"\0" * (64 * 1024 - 2)
    offered = 256  # 16 MB on offer
    with TestClient(app):  # runs the start-up (keys, audit) on the app
        status, body, pulled = asyncio.run(_stream_upload(app, path, token, chunk, offered))
    service.close()
    assert status == 413 and b"image_too_large" in body
    # A search carries one photo (1 MB); a registry upload may carry several (2 MB in all).
    limit = (2 if path.endswith("/photos") else 1) * 1024 * 1024 + (1 << 20)
    assert pulled * len(chunk) <= limit + 2 * len(chunk), f"read {pulled} chunks of {offered}"


async def _stream_upload(app, path: str, token: str, chunk: bytes, chunks: int):
    boundary = b"hm-boundary"
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    pulled = 0

    async def receive():
        nonlocal pulled
        if pulled == 0:
            pulled += 1
            return {"type": "http.request", "body": head, "more_body": True}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled <= chunks}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
             "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
             "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode()),
                         (b"content-type", b"multipart/form-data; boundary=" + boundary),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80), "state": {}, "app": app}
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, pulled


class _Hits:
    def __init__(self, port: int):
        self.port = port
        self.count = 0


class _listener:
    """A loopback TCP listener that counts connections: proof the server fetched nothing."""

    def __enter__(self) -> _Hits:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.1)
        self.hits = _Hits(self.sock.getsockname()[1])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self.hits

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.hits.count += 1
            conn.close()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.sock.close()
