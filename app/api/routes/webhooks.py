"""Webhook endpoints for administrators (the same as `heritage-match webhooks`): each receives every new alert."""

from __future__ import annotations

from fastapi import APIRouter, Query

from app.api.alert_schemas import DeliveryOut, DeliveryPage, WebhookCreate, WebhookCreated, WebhookOut
from app.api.deps import RowOffset, WebhookId, WebhooksDep, allowed
from app.schemas import ErrorResponse
from app.security.roles import Permission

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], dependencies=allowed(Permission.manage_webhooks))

NOT_FOUND: dict[int | str, dict] = {404: {"model": ErrorResponse, "description": "No such webhook endpoint."}}


@router.post("", response_model=WebhookCreated, status_code=201,
             responses={422: {"model": ErrorResponse, "description": "Not an https URL on a public address "
                                                                     "(unsafe_address), or an invalid body."}})
def create_webhook(body: WebhookCreate, webhooks: WebhooksDep) -> WebhookCreated:
    """Register an endpoint; its signing secret is in this response and shown nowhere else.

    The URL must be https, and its host must resolve to public addresses only (not loopback, private,
    link-local...), checked now and again at each delivery, unless HM_WEBHOOK_ALLOW_PRIVATE is set.
    """
    created = webhooks.add(body.url)
    return WebhookCreated(**WebhookOut.of(created.endpoint).model_dump(), secret=created.secret)


@router.get("", response_model=list[WebhookOut])
def list_webhooks(webhooks: WebhooksDep) -> list[WebhookOut]:
    """Every endpoint, removed ones too; never the secret."""
    return [WebhookOut.of(row) for row in webhooks.list()]


@router.delete("/{webhook_id}", response_model=WebhookOut, responses=NOT_FOUND)
def remove_webhook(webhook_id: WebhookId, webhooks: WebhooksDep) -> WebhookOut:
    """Remove an endpoint: it gets no new alert and its pending deliveries are given up. Its log stays."""
    return WebhookOut.of(webhooks.remove(webhook_id))


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage, responses=NOT_FOUND)
def list_deliveries(
    webhook_id: WebhookId, webhooks: WebhooksDep, offset: RowOffset = 0, limit: int = Query(100, ge=1, le=500)
) -> DeliveryPage:
    """The endpoint's delivery log, newest first: every attempt of every delivery."""
    rows, total = webhooks.deliveries(webhook_id, limit=limit, offset=offset)
    return DeliveryPage(items=[DeliveryOut.of(d) for d in rows], total=total, offset=offset, limit=limit)
