"""Alerts: a registered object seen in a marketplace listing, waiting for a person's eyes; and the webhook
endpoints that are told of each new one.

An alert keeps everything a person needs to judge it even after the archive's retention or the registry
forgot its sources: a snapshot of the artefact (inventory number, institution, title), of the listing
(platform, listing id, URL, title, seller, price) and a small JPEG of the listing photo. The same listing
photo against the same artefact raises one alert (``AlertDraft.dedupe_key``): a scan that sees a listing
again, or a retro-hunt run twice, finds the alert it raised before. Raising an alert and each change of
its status are audited in the transaction that makes them.

Webhooks: raising an alert inserts, in the same transaction, one pending delivery per active endpoint, and
nothing else: the sending is ``app.jobs.webhooks.WebhookDispatcher``'s, on its own thread, so a receiver
that never answers slows no scan and no registration. An endpoint's secret is stored as it is (the
HMAC signature needs the secret itself; whoever reads the database can sign, as whoever reads the
receiver's configuration can); it is shown once, at creation.
"""

from __future__ import annotations

import builtins
import datetime as dt
import enum
import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, deferred, mapped_column, sessionmaker

from app.core.db import Base, utcnow
from app.core.errors import AppError, NotFound
from app.core.netguard import check_public_url
from app.registry.models import Artefact, Photo
from app.security.actor import Principal, current_principal
from app.security.audit import record_event

log = logging.getLogger(__name__)
MAX_THUMBNAIL_BYTES = 512 * 1024  # a listing photo's kept copy is small (a few hundred pixels a side)
JPEG_MAGIC = b"\xff\xd8\xff"
ALERT_EVENT = "alert.created"


class AlertStatus(str, enum.Enum):
    new = "new"
    confirmed = "confirmed"
    dismissed = "dismissed"


class AlertSource(str, enum.Enum):
    scan = "scan"  # a scan of a marketplace dump
    retrohunt = "retrohunt"  # a new registry photo searched against the listings archive
    search = "search"  # a monitor's search that named its listing


ALERT_VERDICTS = ("match", "possible")


class DeliveryStatus(str, enum.Enum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


# Longest text kept of a listing's fields: they come from whoever made the listing.
TEXT_LIMITS = {"platform": 100, "listing_id": 500, "listing_url": 4000, "listing_title": 2000,
               "listing_seller": 500, "listing_price": 200}


class Alert(Base):
    __tablename__ = "alerts"
    # AUTOINCREMENT: an alert id is never given again (webhook receivers and the audit trail name alerts by id).
    __table_args__ = (UniqueConstraint("dedupe_key", name="uq_alert_dedupe"),
                      Index("ix_alerts_status_id", "status", "id"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(64))
    # The artefact and its photo, while they exist; the snapshot below stays when they are deleted.
    artefact_id: Mapped[int | None] = mapped_column(ForeignKey("artefacts.id", ondelete="SET NULL"), index=True)
    registry_photo_id: Mapped[int | None] = mapped_column(ForeignKey("photos.id", ondelete="SET NULL"))
    artefact_ref: Mapped[int] = mapped_column(Integer)  # the artefact's id, kept after its deletion
    inventory_number: Mapped[str] = mapped_column(String(200))
    institution: Mapped[str] = mapped_column(String(300), default="")
    artefact_title: Mapped[str | None] = mapped_column(String(500))
    # The listings archive's photo (no foreign key: the archive has its own retention).
    archive_photo_id: Mapped[int | None] = mapped_column(Integer, index=True)
    listing_photo_sha256: Mapped[str | None] = mapped_column(String(64))
    platform: Mapped[str | None] = mapped_column(String(100))
    listing_id: Mapped[str | None] = mapped_column(String(500))
    listing_url: Mapped[str | None] = mapped_column(Text)
    listing_title: Mapped[str | None] = mapped_column(Text)
    listing_seller: Mapped[str | None] = mapped_column(String(500))
    listing_price: Mapped[str | None] = mapped_column(String(200))
    listing_thumbnail: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))  # JPEG; read on its own
    thumbnail_bytes: Mapped[int] = mapped_column(Integer, default=0)
    score: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(20))
    evidence: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the search result's evidence
    model_fingerprint: Mapped[str | None] = mapped_column(String(120))
    source: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=AlertStatus.new.value)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    status_changed_by: Mapped[str | None] = mapped_column(String(100))
    status_changed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    note: Mapped[str | None] = mapped_column(Text)

    @property
    def evidence_dict(self) -> dict:
        try:
            found = json.loads(self.evidence or "{}")
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}

    @property
    def has_thumbnail(self) -> bool:
        return bool(self.thumbnail_bytes)


class WebhookEndpoint(Base):
    """A URL that receives each new alert. Never deleted: removing one deactivates it, and its delivery log stays."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(200))  # stored as is: the signature needs it (see the module)
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))
    removed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    removed_by: Mapped[str | None] = mapped_column(String(100))


class WebhookDelivery(Base):
    """One alert to one endpoint: every attempt at it, and the same idempotency key on each."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("endpoint_id", "alert_id", name="uq_delivery_endpoint_alert"),
                      Index("ix_deliveries_due", "status", "next_attempt_at"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id"), index=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    event: Mapped[str] = mapped_column(String(40), default=ALERT_EVENT)
    payload: Mapped[str] = mapped_column(Text)  # the JSON body, fixed at creation: every attempt sends the same
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.pending.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    first_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)  # the receiver's HTTP status
    last_error: Mapped[str | None] = mapped_column(Text)
    log: Mapped[str] = mapped_column(Text, default="[]")  # JSON: one entry per attempt

    @property
    def attempt_log(self) -> list[dict]:
        try:
            found = json.loads(self.log or "[]")
        except ValueError:
            return []
        return found if isinstance(found, list) else []


# --- alerts ------------------------------------------------------------------------------------------


@dataclass
class AlertDraft:
    """What a scan, a retro-hunt or a search knows of a listing photo that looks like a registered object."""

    artefact_id: int
    score: float
    verdict: str  # "match" or "possible"
    source: str  # "scan", "retrohunt" or "search"
    evidence: dict[str, Any] = field(default_factory=dict)  # SearchResult.evidence as a dict, with its summary
    registry_photo_id: int | None = None  # the registry photo that matched best
    archive_photo_id: int | None = None  # the listings archive's photo
    listing_photo_sha256: str | None = None  # the listing photo's SHA-256: what identifies it (dedupe_key)
    platform: str | None = None
    listing_id: str | None = None
    listing_url: str | None = None
    listing_title: str | None = None
    listing_seller: str | None = None
    listing_price: str | None = None
    listing_thumbnail: bytes | None = None  # a small JPEG of the listing photo, kept with the alert
    model_fingerprint: str | None = None

    def dedupe_key(self) -> str:
        """The same listing photo against the same artefact. The photo is its SHA-256 (the same image in another
        listing is the same photo, as in the archive), else the archive's photo id, else the listing's platform,
        id and URL: pass the SHA-256 whenever it is known, so that scans, searches and retro-hunts agree."""
        if self.listing_photo_sha256:
            photo = f"sha256:{self.listing_photo_sha256.lower()}"
        elif self.archive_photo_id is not None:
            photo = f"archive:{self.archive_photo_id}"
        else:
            photo = "listing:" + json.dumps([self.platform or "", self.listing_id or "", self.listing_url or ""])
        return hashlib.sha256(f"artefact:{self.artefact_id}|{photo}".encode("utf-8", "surrogatepass")).hexdigest()

    def validate(self) -> None:
        if self.verdict not in ALERT_VERDICTS:
            raise ValueError(f"An alert's verdict is one of {ALERT_VERDICTS}, not {self.verdict!r}.")
        AlertSource(self.source)
        if self.listing_thumbnail is not None:
            if not self.listing_thumbnail.startswith(JPEG_MAGIC):
                raise ValueError("An alert's listing thumbnail must be a JPEG.")
            if len(self.listing_thumbnail) > MAX_THUMBNAIL_BYTES:
                raise ValueError(f"An alert's listing thumbnail is at most {MAX_THUMBNAIL_BYTES} bytes.")


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = str(value)
    return value[:limit]


AlertListener = Callable[[Alert], Any]


class AlertStore:
    """Alerts in the registry database: raised (deduplicated), listed, reviewed."""

    def __init__(self, sessions: sessionmaker):
        self.sessions = sessions
        self._listeners: list[AlertListener] = []

    def on_created(self, callback: AlertListener) -> None:
        """Call ``callback(alert)`` after each alert this store creates is committed (on the raising thread:
        keep it quick, e.g. ``WebhookDispatcher.wake``). A failing callback is logged, never raised."""
        self._listeners.append(callback)

    def raise_alert(self, draft: AlertDraft, principal: Principal | None = None) -> tuple[Alert, bool]:
        """Store a new alert, or find the one this listing photo and artefact raised before: (alert, created).

        Audited (``alert.raised``) with the alert, and one webhook delivery queued per active endpoint, in
        the same transaction. Raises ``NotFound`` when the artefact no longer exists, ``ValueError`` for a
        draft no alert can come from (verdict, source, thumbnail).
        """
        draft.validate()
        key = draft.dedupe_key()
        existing = self._by_key(key)
        if existing is not None:
            return existing, False
        try:
            with self.sessions.begin() as s:
                alert = self._insert(s, draft, key, principal)
        except IntegrityError:
            # Raised by another process or thread meanwhile: that one is the alert.
            existing = self._by_key(key)
            if existing is None:
                raise
            return existing, False
        for callback in list(self._listeners):
            try:
                callback(alert)
            except Exception:  # a listener's failure must not fail the scan that raised the alert
                log.exception("alert listener failed")
        return alert, True

    def _by_key(self, key: str) -> Alert | None:
        with self.sessions() as s:
            return s.scalar(select(Alert).where(Alert.dedupe_key == key))

    def _insert(self, s: Session, draft: AlertDraft, key: str, principal: Principal | None) -> Alert:
        artefact = s.get(Artefact, draft.artefact_id)
        if artefact is None:
            raise NotFound(f"No artefact with id {draft.artefact_id}.")
        photo_id = draft.registry_photo_id
        if photo_id is not None and s.scalar(select(Photo.id).where(Photo.id == photo_id,
                                                                     Photo.artefact_id == artefact.id)) is None:
            photo_id = None  # deleted meanwhile, or not this artefact's: the alert does not point at it
        texts = {name: _clip(getattr(draft, name), limit) for name, limit in TEXT_LIMITS.items()}
        alert = Alert(
            dedupe_key=key, artefact_id=artefact.id, artefact_ref=artefact.id, registry_photo_id=photo_id,
            inventory_number=artefact.inventory_number, institution=artefact.institution or "",
            artefact_title=artefact.title, archive_photo_id=draft.archive_photo_id,
            listing_photo_sha256=_clip(draft.listing_photo_sha256, 64), listing_thumbnail=draft.listing_thumbnail,
            thumbnail_bytes=len(draft.listing_thumbnail or b""), score=float(draft.score), verdict=draft.verdict,
            evidence=json.dumps(draft.evidence or {}, default=str, ensure_ascii=False),
            model_fingerprint=_clip(draft.model_fingerprint, 120), source=AlertSource(draft.source).value,
            status=AlertStatus.new.value, created_at=utcnow(), **texts,
        )
        s.add(alert)
        s.flush()  # a duplicate key raises IntegrityError here, and the whole transaction goes
        record_event(s, "alert.raised", artefact_id=artefact.id, model_fingerprint=draft.model_fingerprint,
                     principal=principal, details={
                         "alert_id": alert.id, "source": alert.source, "verdict": alert.verdict,
                         "score": round(alert.score, 4), "registry_photo_id": photo_id,
                         "archive_photo_id": alert.archive_photo_id, "platform": alert.platform,
                         "listing_id": alert.listing_id, "listing_url": alert.listing_url})
        enqueue_deliveries(s, alert)
        return alert

    def list(self, status: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Alert], int]:
        """Alerts, newest first, optionally of one status; and how many there are in all."""
        query = select(Alert)
        if status:
            query = query.where(Alert.status == AlertStatus(status).value)
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery()))
            rows = s.scalars(query.order_by(Alert.id.desc()).offset(offset).limit(limit)).all()
            return list(rows), int(total or 0)

    def archive_photo_ids(self) -> set[int]:
        """The archived listing photos some alert names: the archive's retention keeps them."""
        with self.sessions() as s:
            return set(s.scalars(select(Alert.archive_photo_id).where(Alert.archive_photo_id.is_not(None)).distinct()))

    def iter_all(self, status: str | None = None, batch: int = 500):
        """Every alert, oldest first, read in batches (exports)."""
        after = 0
        while True:
            query = select(Alert).where(Alert.id > after)
            if status:
                query = query.where(Alert.status == AlertStatus(status).value)
            with self.sessions() as s:
                rows = list(s.scalars(query.order_by(Alert.id).limit(batch)))
            if not rows:
                return
            yield from rows
            after = rows[-1].id

    def count(self, status: str | None = None) -> int:
        query = select(func.count()).select_from(Alert)
        if status:
            query = query.where(Alert.status == AlertStatus(status).value)
        with self.sessions() as s:
            return int(s.scalar(query) or 0)

    def get(self, alert_id: int) -> Alert:
        with self.sessions() as s:
            alert = s.get(Alert, alert_id)
            if alert is None:
                raise NotFound(f"No alert with id {alert_id}.")
            return alert

    def thumbnail(self, alert_id: int) -> bytes | None:
        """The listing photo's kept JPEG; ``NotFound`` for no such alert."""
        with self.sessions() as s:
            row = s.execute(select(Alert.id, Alert.listing_thumbnail).where(Alert.id == alert_id)).first()
        if row is None:
            raise NotFound(f"No alert with id {alert_id}.")
        return row[1]

    def set_status(self, alert_id: int, status: str, note: str | None = None,
                   principal: Principal | None = None) -> Alert:
        """Confirm, dismiss or reopen an alert (``note``: why; None keeps the note it has). Audited
        (``alert.status``) with what changed; a request that changes nothing changes and records nothing."""
        new = AlertStatus(status).value
        who = principal or current_principal()
        with self.sessions.begin() as s:
            alert = s.get(Alert, alert_id)
            if alert is None:
                raise NotFound(f"No alert with id {alert_id}.")
            changes: dict[str, dict[str, Any]] = {}
            if alert.status != new:
                changes["status"] = {"from": alert.status, "to": new}
            if note is not None and note != (alert.note or ""):
                changes["note"] = {"from": alert.note, "to": note}
            if not changes:
                return alert
            alert.status = new
            if note is not None:
                alert.note = note or None
            alert.status_changed_by = who.name
            alert.status_changed_at = utcnow()
            record_event(s, "alert.status", artefact_id=alert.artefact_id, principal=who,
                         details={"alert_id": alert.id, "changes": changes})
            return alert


def alert_payload(alert: Alert) -> dict[str, Any]:
    """An alert as JSON-ready data: the API's ``AlertOut``, the webhook's ``alert``, a line of an export."""
    return {
        "id": alert.id,
        "status": alert.status,
        "source": alert.source,
        "verdict": alert.verdict,
        "score": alert.score,
        "evidence": alert.evidence_dict,
        "created_at": _iso(alert.created_at),
        "status_changed_by": alert.status_changed_by,
        "status_changed_at": _iso(alert.status_changed_at),
        "note": alert.note,
        "artefact": {"id": alert.artefact_ref, "exists": alert.artefact_id is not None,
                     "inventory_number": alert.inventory_number, "institution": alert.institution,
                     "title": alert.artefact_title},
        "registry_photo_id": alert.registry_photo_id,
        "archive_photo_id": alert.archive_photo_id,
        "listing": {"platform": alert.platform, "listing_id": alert.listing_id, "url": alert.listing_url,
                    "title": alert.listing_title, "seller": alert.listing_seller, "price": alert.listing_price,
                    "photo_sha256": alert.listing_photo_sha256},
        "listing_photo_url": f"/v1/alerts/{alert.id}/listing-photo" if alert.has_thumbnail else None,
        "model_fingerprint": alert.model_fingerprint,
    }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"  # the database keeps UTC without a zone


# --- webhooks --------------------------------------------------------------------------------------


def enqueue_deliveries(s: Session, alert: Alert) -> int:
    """One pending delivery of ``alert`` per active endpoint, in session ``s`` (the alert's transaction)."""
    body = json.dumps({"event": ALERT_EVENT, "alert": alert_payload(alert)}, ensure_ascii=False,
                      separators=(",", ":"))
    endpoints = list(s.scalars(select(WebhookEndpoint.id).where(WebhookEndpoint.active.is_(True))))
    now = utcnow()
    for endpoint_id in endpoints:
        s.add(WebhookDelivery(endpoint_id=endpoint_id, alert_id=alert.id, idempotency_key=uuid.uuid4().hex,
                              event=ALERT_EVENT, payload=body, status=DeliveryStatus.pending.value,
                              created_at=now, next_attempt_at=now, log="[]"))
    return len(endpoints)


@dataclass(frozen=True)
class CreatedEndpoint:
    endpoint: WebhookEndpoint
    secret: str  # shown once


SECRET_PREFIX = "whsec_"


class WebhookStore:
    """Webhook endpoints (admins register them) and their delivery log."""

    def __init__(self, sessions: sessionmaker, allow_private: bool = False):
        self.sessions = sessions
        self.allow_private = allow_private

    def add(self, url: str, secret: str | None = None, principal: Principal | None = None) -> CreatedEndpoint:
        """Register ``url`` (https to a public address unless ``allow_private``; its host is resolved and
        every address checked now, and again at each delivery). ``secret``: None makes a random one."""
        checked = check_public_url(url, self.allow_private)
        if secret is None or secret == "auto":
            secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        elif not 16 <= len(secret) <= 200 or not secret.isprintable():
            raise AppError("A webhook secret has 16 to 200 printable characters.", code="validation_error",
                           status_code=422)
        who = principal or current_principal()
        with self.sessions.begin() as s:
            row = WebhookEndpoint(url=checked.url, secret=secret, active=True, created_at=utcnow(),
                                  created_by=who.name)
            s.add(row)
            s.flush()
            record_event(s, "webhook.create", principal=who, details={"endpoint_id": row.id, "url": row.url})
        return CreatedEndpoint(row, secret)

    def list(self, include_removed: bool = True) -> list[WebhookEndpoint]:
        query = select(WebhookEndpoint).order_by(WebhookEndpoint.id)
        if not include_removed:
            query = query.where(WebhookEndpoint.active.is_(True))
        with self.sessions() as s:
            return list(s.scalars(query))

    def get(self, endpoint_id: int) -> WebhookEndpoint:
        with self.sessions() as s:
            row = s.get(WebhookEndpoint, endpoint_id)
            if row is None:
                raise NotFound(f"No webhook endpoint with id {endpoint_id}.")
            return row

    def remove(self, endpoint_id: int, principal: Principal | None = None) -> WebhookEndpoint:
        """Deactivate an endpoint: it gets no new alert, and its pending deliveries are given up."""
        who = principal or current_principal()
        with self.sessions.begin() as s:
            row = s.get(WebhookEndpoint, endpoint_id)
            if row is None:
                raise NotFound(f"No webhook endpoint with id {endpoint_id}.")
            if not row.active:
                return row
            row.active = False
            row.removed_at = utcnow()
            row.removed_by = who.name
            pending = list(s.scalars(select(WebhookDelivery).where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.status == DeliveryStatus.pending.value)))
            for d in pending:
                d.status = DeliveryStatus.failed.value
                d.last_error = "endpoint removed"
            record_event(s, "webhook.remove", principal=who, details={
                "endpoint_id": row.id, "url": row.url, "pending_given_up": len(pending)})
            return row

    def deliveries(self, endpoint_id: int | None = None, limit: int = 100,
                   offset: int = 0) -> tuple[builtins.list[WebhookDelivery], int]:
        """The delivery log, newest first (of one endpoint, or all)."""
        query = select(WebhookDelivery)
        if endpoint_id is not None:
            query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
        with self.sessions() as s:
            if endpoint_id is not None and s.get(WebhookEndpoint, endpoint_id) is None:
                raise NotFound(f"No webhook endpoint with id {endpoint_id}.")
            total = s.scalar(select(func.count()).select_from(query.subquery()))
            rows = s.scalars(query.order_by(WebhookDelivery.id.desc()).offset(offset).limit(limit)).all()
            return list(rows), int(total or 0)
