"""Webhook deliveries to a loopback receiver: signed, retried with the same idempotency key, never followed
through redirects, re-checked at send time, durable, and never in the way of whoever raises an alert."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.core.config import Settings
from app.core.db import utcnow
from app.jobs.webhooks import WebhookDispatcher, sign
from app.registry.alerts import AlertDraft, AlertStore, WebhookDelivery, WebhookStore
from app.registry.store import RegistryStore
from tests.conftest import jpeg_bytes, random_photo


class Receiver:
    """A webhook receiver on 127.0.0.1: answers each request with the next of ``codes`` (then the last one),
    or, with ``hang``, accepts the request and never answers until released."""

    def __init__(self, codes=(200,), hang: bool = False, trickle: bool = False):
        self.codes = list(codes)
        self.hang = hang
        self.trickle = trickle
        self.requests: list[dict] = []
        self.got_request = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                receiver.got_request.set()
                if receiver.hang:
                    receiver.release.wait(30)
                    return
                if receiver.trickle:  # an answer that never ends, one byte at a time
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    while not receiver.release.wait(0.2):
                        try:
                            self.wfile.write(b"a")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                code = receiver.codes.pop(0) if len(receiver.codes) > 1 else receiver.codes[0]
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(*args, **kw) -> Receiver:
        made.append(Receiver(*args, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def hook_settings(tmp_path):
    return Settings(data_dir=tmp_path / "data", webhook_allow_private=True, webhook_timeout_s=3)


@pytest.fixture
def store(tmp_path):
    s = RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "photos")
    yield s
    s.close()


@pytest.fixture
def artefact(store):
    return store.create_artefact({"inventory_number": "COIN-7", "title": "Tetradrachm"}, [], None)


def draft(artefact, n: int = 1) -> AlertDraft:
    return AlertDraft(artefact_id=artefact.id, score=0.95, verdict="match", source="retrohunt",
                      evidence={"inliers": 52, "summary": "52 keypoints agree"}, archive_photo_id=n,
                      platform="bazaar", listing_id=f"L-{n}", listing_url=f"https://bazaar.example/l/{n}",
                      listing_title="Ancient coin", listing_thumbnail=jpeg_bytes(random_photo(n, size=(48, 48))))


def _delivery(store, delivery_id=None) -> WebhookDelivery:
    rows, _ = WebhookStore(store.sessions).deliveries()
    return rows[0] if delivery_id is None else next(d for d in rows if d.id == delivery_id)


def verify(secret: str, headers: dict, body: bytes, max_age_s: float = 300) -> bool:
    """The receiver's check, as the README shows it."""
    ts = headers["X-HM-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-HM-Signature"]) and abs(time.time() - int(ts)) <= max_age_s


def test_a_loopback_receiver_gets_a_new_alert_signed(hook_settings, store, artefact, receivers):
    receiver = receivers()
    created = WebhookStore(store.sessions, allow_private=True).add(receiver.url)
    alerts = AlertStore(store.sessions)
    dispatcher = WebhookDispatcher(hook_settings, store.sessions, poll_s=30).start()  # woken, not polling
    alerts.on_created(dispatcher.wake)
    try:
        alert, _ = alerts.raise_alert(draft(artefact))
        assert receiver.got_request.wait(10), "the dispatcher did not deliver"
        deadline = time.monotonic() + 5
        while _delivery(store).status == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
    [request] = receiver.requests
    headers, body = request["headers"], request["body"]
    assert verify(created.secret, headers, body)
    assert not verify("whsec_another", headers, body)
    assert headers["X-HM-Signature"] == sign(created.secret, int(headers["X-HM-Timestamp"]), body)
    assert headers["Content-Type"] == "application/json" and request["path"] == "/hook"
    payload = json.loads(body)
    assert payload["event"] == "alert.created" and payload["alert"]["id"] == alert.id
    assert payload["alert"]["artefact"]["inventory_number"] == "COIN-7"
    assert payload["alert"]["evidence"]["summary"] == "52 keypoints agree"
    delivery = _delivery(store)
    assert delivery.status == "delivered" and delivery.attempts == 1 and delivery.last_status == 200
    assert headers["X-HM-Delivery"] == headers["Idempotency-Key"] == delivery.idempotency_key
    assert [e["status"] for e in delivery.attempt_log] == [200]


def test_a_receiver_that_fails_twice_gets_the_alert_once_with_one_key(hook_settings, store, artefact, receivers):
    receiver = receivers(codes=(500, 503, 200))
    WebhookStore(store.sessions, allow_private=True).add(receiver.url)
    AlertStore(store.sessions).raise_alert(draft(artefact))
    dispatcher = WebhookDispatcher(hook_settings, store.sessions)
    t0 = utcnow()
    assert [a.status for a in dispatcher.deliver_due(t0)] == [500]
    d = _delivery(store)
    assert d.status == "pending" and 9 <= (d.next_attempt_at - t0).total_seconds() <= 11  # 10 s back-off
    assert dispatcher.deliver_due(t0 + dt.timedelta(seconds=5)) == []  # not yet due
    assert [a.status for a in dispatcher.deliver_due(t0 + dt.timedelta(seconds=11))] == [503]
    d = _delivery(store)
    assert 19 <= (d.next_attempt_at - (t0 + dt.timedelta(seconds=11))).total_seconds() <= 21  # then 20 s
    assert [a.status for a in dispatcher.deliver_due(t0 + dt.timedelta(seconds=40))] == [200]
    assert dispatcher.deliver_due(t0 + dt.timedelta(hours=2)) == []  # delivered: never again
    keys = {r["headers"]["Idempotency-Key"] for r in receiver.requests}
    assert len(receiver.requests) == 3 and keys == {_delivery(store).idempotency_key}
    assert {r["body"] for r in receiver.requests} == {receiver.requests[0]["body"]}  # the same body each time
    d = _delivery(store)
    assert d.status == "delivered" and d.attempts == 3
    assert [(e["attempt"], e["status"]) for e in d.attempt_log] == [(1, 500), (2, 503), (3, 200)]


def test_back_off_doubles_up_to_an_hour_and_gives_up_after_the_retry_window(tmp_path, store, artefact, receivers):
    settings = Settings(data_dir=tmp_path / "data", webhook_allow_private=True, webhook_retry_hours=0.01)  # 36 s
    receiver = receivers(codes=(500,))
    WebhookStore(store.sessions, allow_private=True).add(receiver.url)
    AlertStore(store.sessions).raise_alert(draft(artefact))
    dispatcher = WebhookDispatcher(settings, store.sessions)
    assert [dispatcher.backoff(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert dispatcher.backoff(30) == 3600
    t0 = utcnow()
    dispatcher.deliver_due(t0)  # next at +10 s
    dispatcher.deliver_due(t0 + dt.timedelta(seconds=11))  # next at +31 s, within the window
    assert _delivery(store).status == "pending"
    dispatcher.deliver_due(t0 + dt.timedelta(seconds=32))  # next would be +72 s: past the window
    d = _delivery(store)
    assert d.status == "failed" and d.attempts == 3 and d.last_status == 500
    assert dispatcher.deliver_due(t0 + dt.timedelta(hours=1)) == []


def test_a_receiver_that_never_answers_does_not_slow_raising_alerts(hook_settings, store, artefact, receivers):
    receiver = receivers(hang=True)
    WebhookStore(store.sessions, allow_private=True).add(receiver.url)
    alerts = AlertStore(store.sessions)
    dispatcher = WebhookDispatcher(hook_settings, store.sessions, poll_s=0.1).start()
    alerts.on_created(dispatcher.wake)
    try:
        alerts.raise_alert(draft(artefact, 1))
        assert receiver.got_request.wait(10)  # the dispatcher is now stuck on the receiver
        t = time.perf_counter()
        second, created = alerts.raise_alert(draft(artefact, 2))
        took = time.perf_counter() - t
        assert created and took < 0.5, f"raise_alert took {took:.2f} s while the receiver hung"
        # The stuck attempt ends at the whole-request timeout (3 s), whatever the receiver does.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            logs = [d.attempt_log for d in WebhookStore(store.sessions).deliveries()[0]]
            if any(logs):
                break
            time.sleep(0.1)
    finally:
        receiver.release.set()
        dispatcher.stop()
    entries = [e for log in logs for e in log]
    assert entries and "no answer within 3 s" in entries[0]["error"] and entries[0]["ms"] < 4500


def test_redirects_are_not_followed(hook_settings, store, artefact, receivers):
    receiver = receivers(codes=(302,))
    WebhookStore(store.sessions, allow_private=True).add(receiver.url)
    AlertStore(store.sessions).raise_alert(draft(artefact))
    [attempt] = WebhookDispatcher(hook_settings, store.sessions).deliver_due()
    assert attempt.status == 302 and not attempt.ok
    assert [r["path"] for r in receiver.requests] == ["/hook"]
    assert _delivery(store).status == "pending" and "302" in _delivery(store).last_error


def test_the_address_is_checked_again_at_send_time(tmp_path, store, artefact, receivers):
    receiver = receivers()
    WebhookStore(store.sessions, allow_private=True).add(receiver.url)  # allowed then...
    AlertStore(store.sessions).raise_alert(draft(artefact))
    strict = Settings(data_dir=tmp_path / "data", webhook_allow_private=False)  # ...not any more
    [attempt] = WebhookDispatcher(strict, store.sessions).deliver_due()
    assert attempt.status is None and "http" in attempt.error
    assert receiver.requests == []
    assert _delivery(store).status == "pending"  # retried later, DNS or settings may change


def test_a_pending_delivery_survives_a_restart(tmp_path, hook_settings, receivers):
    receiver = receivers()
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    first = RegistryStore(db, tmp_path / "photos")
    art = first.create_artefact({"inventory_number": "R-1"}, [], None)
    WebhookStore(first.sessions, allow_private=True).add(receiver.url)
    AlertStore(first.sessions).raise_alert(draft(art))
    first.close()  # the server stops before the dispatcher sent it
    second = RegistryStore(db, tmp_path / "photos")
    try:
        assert [a.status for a in WebhookDispatcher(hook_settings, second.sessions).deliver_due()] == [200]
    finally:
        second.close()
    assert len(receiver.requests) == 1


def test_two_dispatchers_never_send_one_attempt_twice(hook_settings, store, artefact, receivers):
    receiver = receivers()
    WebhookStore(store.sessions, allow_private=True).add(receiver.url)
    for n in range(6):
        AlertStore(store.sessions).raise_alert(draft(artefact, n))
    a, b = (WebhookDispatcher(hook_settings, store.sessions) for _ in range(2))
    now = utcnow()
    results: list = []
    threads = [threading.Thread(target=lambda d=d: results.extend(d.deliver_due(now))) for d in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(receiver.requests) == 6
    assert len({r["headers"]["Idempotency-Key"] for r in receiver.requests}) == 6


def test_the_whole_attempt_has_the_timeout_whatever_the_receivers_pace(hook_settings, store, artefact, receivers):
    receiver = receivers(trickle=True)  # each byte well within a read timeout, the answer never complete
    WebhookStore(store.sessions, allow_private=True).add(receiver.url)
    AlertStore(store.sessions).raise_alert(draft(artefact))
    t = time.perf_counter()
    [attempt] = WebhookDispatcher(hook_settings, store.sessions).deliver_due()
    took = time.perf_counter() - t
    receiver.release.set()
    assert attempt.status is None and "no answer within 3 s" in attempt.error
    assert 2.5 < took < 4.5, took
