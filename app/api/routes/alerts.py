"""Alerts for registrars and admins: registry objects seen in marketplace listings, to confirm or dismiss."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from app.api.alert_schemas import AlertOut, AlertPage, AlertStatusName, AlertUpdate
from app.api.deps import AlertId, AlertsDep, RowOffset, allowed
from app.core.errors import NotFound
from app.schemas import ErrorResponse
from app.security.roles import Permission

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])

NOT_FOUND: dict[int | str, dict] = {404: {"model": ErrorResponse, "description": "No such alert."}}
READ = allowed(Permission.read_alerts)


@router.get("", response_model=AlertPage, dependencies=READ)
def list_alerts(
    alerts: AlertsDep,
    status: AlertStatusName | None = Query(None, description="Only alerts of this status (`new`: to review)."),
    offset: RowOffset = 0,
    limit: int = Query(50, ge=1, le=500),
) -> AlertPage:
    """Alerts, newest first: each a listing photo that looks like a registered object."""
    rows, total = alerts.list(status, limit=limit, offset=offset)
    return AlertPage(items=[AlertOut.of(a) for a in rows], total=total, offset=offset, limit=limit)


@router.get("/{alert_id}", response_model=AlertOut, responses=NOT_FOUND, dependencies=READ)
def get_alert(alert_id: AlertId, alerts: AlertsDep) -> AlertOut:
    return AlertOut.of(alerts.get(alert_id))


@router.patch("/{alert_id}", response_model=AlertOut, responses=NOT_FOUND,
              dependencies=allowed(Permission.review_alerts))
def update_alert(alert_id: AlertId, body: AlertUpdate, alerts: AlertsDep) -> AlertOut:
    """Confirm (the listing shows the artefact), dismiss, or reopen an alert; audited with who and what changed."""
    return AlertOut.of(alerts.set_status(alert_id, body.status, note=body.note))


@router.get(
    "/{alert_id}/listing-photo",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "The kept copy of the listing photo."},
               **NOT_FOUND},
    dependencies=READ,
)
def listing_photo(alert_id: AlertId, alerts: AlertsDep) -> Response:
    """The small copy of the listing photo kept with the alert (it outlives the listings archive's retention)."""
    data = alerts.thumbnail(alert_id)
    if data is None:
        raise NotFound(f"Alert {alert_id} kept no listing photo.")
    return Response(data, media_type="image/jpeg")
