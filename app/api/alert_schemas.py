"""Types of the alert and webhook endpoints (``app.registry.alerts`` gives their data)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.registry.alerts import Alert, WebhookDelivery, WebhookEndpoint, alert_payload
from app.schemas import UtcDatetime, Verdict

AlertStatusName = Literal["new", "confirmed", "dismissed"]


class AlertArtefact(BaseModel):
    """The artefact as it was when the alert was raised (kept when the record is deleted)."""

    id: int
    exists: bool = Field(description="Whether the artefact is still in the registry.")
    inventory_number: str
    institution: str
    title: str | None


class AlertListing(BaseModel):
    """The listing as the scan or archive saw it: text written by the seller, untrusted."""

    platform: str | None
    listing_id: str | None
    url: str | None
    title: str | None
    seller: str | None
    price: str | None
    photo_sha256: str | None = Field(description="SHA-256 of the listing photo.")


class AlertOut(BaseModel):
    id: int
    status: AlertStatusName
    source: Literal["scan", "retrohunt", "search"] = Field(
        description="What raised it: a scan of a dump, a retro-hunt of the listings archive, or a search.")
    verdict: Verdict
    score: float = Field(description="Calibrated confidence that the listing shows the artefact, 0 to 1.")
    evidence: dict[str, Any] = Field(description="The search's evidence (as in search results), with its `summary`.")
    created_at: UtcDatetime
    status_changed_by: str | None = Field(description="The key (name) that last changed the status.")
    status_changed_at: UtcDatetime | None
    note: str | None
    artefact: AlertArtefact
    registry_photo_id: int | None = Field(description="The registry photo that matched (GET /v1/photos/{id}).")
    archive_photo_id: int | None = Field(description="The listings archive's photo.")
    listing: AlertListing
    listing_photo_url: str | None = Field(description="The kept copy of the listing photo (JPEG), if any.")
    model_fingerprint: str | None

    @classmethod
    def of(cls, alert: Alert) -> AlertOut:
        return cls.model_validate(alert_payload(alert))


class AlertPage(BaseModel):
    items: list[AlertOut]
    total: int
    offset: int
    limit: int


class AlertUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    status: AlertStatusName = Field(description="`confirmed`: the listing shows the artefact; `dismissed`: it does "
                                                "not; `new`: reopen.")
    note: str | None = Field(default=None, max_length=2000, description="Why (kept with the alert; omitted: the "
                                                                         "note is kept as it is).")


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: str = Field(..., min_length=1, max_length=2000, description="An https URL on a public address.")


class WebhookOut(BaseModel):
    id: int
    url: str
    active: bool
    created_at: UtcDatetime
    created_by: str
    removed_at: UtcDatetime | None
    removed_by: str | None

    @classmethod
    def of(cls, row: WebhookEndpoint) -> WebhookOut:
        return cls.model_validate(row, from_attributes=True)


class WebhookCreated(WebhookOut):
    secret: str = Field(description="Signs every delivery (X-HM-Signature): shown this once.")


class DeliveryAttempt(BaseModel):
    at: str
    attempt: int
    status: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    error: str | None
    ms: float


class DeliveryOut(BaseModel):
    id: int
    endpoint_id: int
    alert_id: int
    idempotency_key: str = Field(description="Sent as X-HM-Delivery and Idempotency-Key, the same on every attempt.")
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: UtcDatetime
    first_attempt_at: UtcDatetime | None
    last_attempt_at: UtcDatetime | None
    next_attempt_at: UtcDatetime | None = Field(description="When a pending delivery is tried next.")
    delivered_at: UtcDatetime | None
    last_status: int | None
    last_error: str | None
    log: list[DeliveryAttempt] = Field(description="Every attempt, oldest first.")

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=row.id, endpoint_id=row.endpoint_id, alert_id=row.alert_id, idempotency_key=row.idempotency_key,
            event=row.event, status=row.status, attempts=row.attempts,  # type: ignore[arg-type]
            created_at=row.created_at, first_attempt_at=row.first_attempt_at, last_attempt_at=row.last_attempt_at,
            next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
            delivered_at=row.delivered_at, last_status=row.last_status, last_error=row.last_error,
            log=[DeliveryAttempt.model_validate(e) for e in row.attempt_log],
        )


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    total: int
    offset: int
    limit: int
