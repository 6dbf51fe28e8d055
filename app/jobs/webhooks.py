"""The webhook dispatcher: sends each pending delivery of ``app.registry.alerts`` to its endpoint, signed.

Raising an alert only inserts rows (``AlertStore.raise_alert``); this thread does the sending, so a receiver
that never answers delays no scan and no registration. Each request is a POST of the delivery's JSON body
with

- ``X-HM-Timestamp``: Unix seconds when this attempt was signed;
- ``X-HM-Signature``: ``sha256=`` + hex HMAC-SHA256(secret, ``f"{timestamp}."`` + body);
- ``X-HM-Delivery`` and ``Idempotency-Key``: the delivery's key, the same on every attempt, so a receiver
  that got an attempt whose answer was lost recognises the retry.

A 2xx answer delivers it; anything else (an error, a timeout, a redirect, which is never followed) is
retried after 10 s, 20 s, 40 s... (at most an hour apart) until ``webhook_retry_hours`` after the first
attempt, then the delivery has failed. Every attempt is logged in the delivery's row.

The endpoint's host is resolved and checked again at each attempt (``app.core.netguard``: DNS may have
changed since registration) and the connection goes to the address that was checked. The whole attempt
(connecting, sending, the answer) has ``webhook_timeout_s``.

Several server processes may each run a dispatcher on one database: an attempt first claims its row
(a compare-and-set of its next attempt time, moved past the attempt's deadline), so no two processes send
the same attempt; an attempt cut off by a crash is retried, with the same key, once its claim expires.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from app import __version__
from app.core.config import Settings
from app.core.db import utcnow
from app.core.errors import AppError
from app.core.netguard import CheckedURL, check_public_url
from app.registry.alerts import DeliveryStatus, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

MAX_LOG_ENTRIES = 200  # attempts kept in a delivery's log (a day of back-off capped at an hour is ~35)
ERROR_CHARS = 300
CLAIM_GRACE_S = 30.0  # a claimed attempt is retried this long after its deadline when its process died


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-HM-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True)
class Attempt:
    """What one attempt got: the receiver's HTTP status (None: no answer) or what went wrong."""

    status: int | None
    error: str | None
    ms: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked beforehand, while the Host header names the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to a checked address; the certificate must be valid for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def post(checked: CheckedURL, body: bytes, headers: dict[str, str], timeout: float,
         tls: ssl.SSLContext | None = None) -> Attempt:
    """POST ``body`` to the checked URL's first reachable address, within ``timeout`` seconds in all.

    A watchdog closes the connection at the deadline, whatever the receiver's pace (socket timeouts alone
    bound each read, not a receiver that trickles a byte at a time). Redirects are answers like any other.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    conn: http.client.HTTPConnection | None = None
    timer: threading.Timer | None = None
    errors: list[str] = []

    def elapsed_ms() -> float:
        return (time.monotonic() - t0) * 1000

    try:
        for address in checked.addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if checked.scheme == "https":
                conn = _PinnedHTTPSConnection(checked.host, checked.port, address, remaining,
                                              tls or ssl.create_default_context())
            else:
                conn = _PinnedHTTPConnection(checked.host, checked.port, address, remaining)
            try:
                conn.connect()
                break
            except OSError as exc:
                errors.append(f"{address}: {exc}")
                conn.close()
                conn = None
        if conn is None:
            return Attempt(None, "cannot connect: " + ("; ".join(errors) or "timed out"), elapsed_ms())
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (conn,))
        timer.daemon = True
        timer.start()
        conn.request("POST", checked.target, body=body, headers=headers)
        response = conn.getresponse()
        response.read(4096)  # a little of the answer, so that the receiver sees its answer taken
        if time.monotonic() > deadline:
            return Attempt(None, f"no answer within {timeout:g} s", elapsed_ms())
        return Attempt(response.status, None if 200 <= response.status < 300 else
                       f"HTTP {response.status} {response.reason}"[:ERROR_CHARS], elapsed_ms())
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        if time.monotonic() >= deadline - 0.01:
            return Attempt(None, f"no answer within {timeout:g} s", elapsed_ms())
        return Attempt(None, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS], elapsed_ms())
    finally:
        if timer is not None:
            timer.cancel()
        if conn is not None:
            conn.close()


def _cut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


Sender = Callable[[CheckedURL, bytes, dict[str, str], float], Attempt]


class WebhookDispatcher:
    """Delivers pending webhook deliveries: on a daemon thread (``start``/``stop``, ``wake`` when an alert was
    just raised), or once, now (``deliver_due``, for the CLI and tests)."""

    def __init__(self, settings: Settings, sessions: sessionmaker, *, clock: Callable[[], dt.datetime] = utcnow,
                 backoff_base_s: float = 10.0, backoff_cap_s: float = 3600.0, poll_s: float = 2.0,
                 workers: int = 4, sender: Sender | None = None):
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.poll_s = poll_s
        self.workers = max(1, workers)
        self.sender: Sender = sender or post
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the thread ------------------------------------------------------------------------------

    def start(self) -> WebhookDispatcher:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread; an attempt in flight is cut off by its own deadline at worst (its claim then
        expires and it is retried, with the same key, by the next dispatcher)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self, *_: object) -> None:
        """Look for due deliveries now rather than at the next poll (takes and ignores any arguments, so that
        it can be an ``AlertStore.on_created`` listener)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # a database hiccup: try again at the next poll
                log.exception("webhook deliveries failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    # --- one round ----------------------------------------------------------------------------

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones: 10, 20, 40... capped at an hour."""
        return min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, attempts - 1))

    def deliver_due(self, now: dt.datetime | None = None, limit: int = 100) -> list[Attempt]:
        """Attempt every pending delivery that is due at ``now`` (default: the clock's time), a few at once;
        returns what each attempt got."""
        now = now or self.clock()
        with self.sessions() as s:
            due = list(s.execute(
                select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
                .where(WebhookDelivery.status == DeliveryStatus.pending.value,
                       WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)).all())
        if not due:
            return []
        if len(due) == 1 or self.workers == 1:
            found = [self._attempt(delivery_id, planned, now) for delivery_id, planned in due]
        else:
            with ThreadPoolExecutor(min(self.workers, len(due)), thread_name_prefix="webhook") as pool:
                found = list(pool.map(lambda row: self._attempt(row[0], row[1], now), due))
        return [a for a in found if a is not None]

    def _attempt(self, delivery_id: int, planned: dt.datetime, now: dt.datetime) -> Attempt | None:
        timeout = self.settings.webhook_timeout_s
        with self.sessions.begin() as s:
            # Claim the attempt: only the dispatcher that moves next_attempt_at from what it read sends it.
            claimed = s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.pending.value,
                       WebhookDelivery.next_attempt_at == planned)
                .values(next_attempt_at=now + dt.timedelta(seconds=timeout + CLAIM_GRACE_S),
                        attempts=WebhookDelivery.attempts + 1, last_attempt_at=now)
            ).rowcount
            if not claimed:
                return None
            delivery = s.get(WebhookDelivery, delivery_id)
            assert delivery is not None
            endpoint = s.get(WebhookEndpoint, delivery.endpoint_id)
            if delivery.first_attempt_at is None:
                delivery.first_attempt_at = now
            if endpoint is None or not endpoint.active:
                delivery.status = DeliveryStatus.failed.value
                delivery.last_error = "endpoint removed"
                return None
            url, secret, key, body = endpoint.url, endpoint.secret, delivery.idempotency_key, delivery.payload
            first, attempts = delivery.first_attempt_at, delivery.attempts
        attempt = self._send(url, secret, key, body.encode("utf-8"), now, timeout)
        self._record(delivery_id, attempt, now, first, attempts)
        return attempt

    def _send(self, url: str, secret: str, key: str, body: bytes, now: dt.datetime, timeout: float) -> Attempt:
        t0 = time.monotonic()
        try:
            # Again at each attempt: the name may resolve elsewhere than at registration (DNS rebinding).
            checked = check_public_url(url, self.settings.webhook_allow_private)
        except AppError as exc:
            return Attempt(None, exc.message[:ERROR_CHARS], (time.monotonic() - t0) * 1000)
        timestamp = int(now.replace(tzinfo=dt.timezone.utc).timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"heritage-match-webhooks/{__version__}",
            "X-HM-Event": "alert.created",
            "X-HM-Timestamp": str(timestamp),
            "X-HM-Signature": sign(secret, timestamp, body),
            "X-HM-Delivery": key,
            "Idempotency-Key": key,
        }
        try:
            return self.sender(checked, body, headers, timeout)
        except Exception as exc:  # a sender must answer with an Attempt; never lose the delivery over it
            log.exception("webhook sender failed")
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS], (time.monotonic() - t0) * 1000)

    def _record(self, delivery_id: int, attempt: Attempt, now: dt.datetime, first: dt.datetime,
                attempts: int) -> None:
        with self.sessions.begin() as s:
            delivery = s.get(WebhookDelivery, delivery_id)
            if delivery is None:
                return
            entry = {"at": now.isoformat() + "Z", "attempt": attempts, "status": attempt.status,
                     "error": attempt.error, "ms": round(attempt.ms, 1)}
            delivery.log = json.dumps((delivery.attempt_log + [entry])[-MAX_LOG_ENTRIES:])
            delivery.last_status = attempt.status
            delivery.last_error = attempt.error
            if delivery.status != DeliveryStatus.pending.value:
                return  # given up meanwhile (its endpoint was removed): the attempt is logged, nothing more
            if attempt.ok:
                delivery.status = DeliveryStatus.delivered.value
                delivery.delivered_at = now
                return
            after = now + dt.timedelta(seconds=attempt.ms / 1000 + self.backoff(attempts))  # from its end
            if after > first + dt.timedelta(hours=self.settings.webhook_retry_hours):
                delivery.status = DeliveryStatus.failed.value
                log.warning("webhook delivery %d given up after %d attempts: %s", delivery_id, attempts,
                            attempt.error)
            else:
                delivery.next_attempt_at = after
