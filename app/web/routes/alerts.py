"""Alerts for registrars and admins: the list of listings that look like registered objects, and each one
side by side with the registry photo, to confirm or dismiss (audited as the signed-in key).

A listing's text (title, seller, price, URL) was written by whoever listed the object: it is escaped by
the templates, isolated from the page's direction (``<bdi>``, ``dir="auto"``), its invisible controls are
shown as markers (``app.core.text.visible_controls``), and its URL is a link only when it is plain http(s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.core.errors import NotFound
from app.core.text import has_controls, visible_controls
from app.registry.alerts import Alert, AlertStatus, AlertStore
from app.web.deps import AlertForm, AlertId, AlertReader
from app.web.i18n import N_
from app.web.pages import WebError, finish, redirect, render

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 25
STATUS_LABELS = {"new": N_("New"), "confirmed": N_("Confirmed"), "dismissed": N_("Dismissed")}
SOURCE_LABELS = {"scan": N_("Scan of a dump"), "retrohunt": N_("Retro-hunt in the listings archive"),
                 "search": N_("Search")}
ALL = "all"


def _alerts(request: Request) -> AlertStore:
    return AlertStore(request.app.state.service.store.sessions)


def shown(value: object) -> str:
    """Listing text for a person: invisible controls made visible (the template escapes it)."""
    return visible_controls(str(value)) if value is not None else ""


def safe_link(url: str | None) -> str | None:
    """The listing's URL when it is a plain http(s) address that may be a link; None otherwise."""
    if not url or has_controls(url) or any(c.isspace() for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme.lower() in ("http", "https") and parts.netloc else None


@dataclass
class EvidenceView:
    """What the evidence line macro (``macros.evidence``) reads of a search result."""

    verdict: str
    evidence: dict[str, Any]
    known: bool  # the alert's evidence has the fields the line is made of


def evidence_view(alert: Alert) -> EvidenceView:
    found = alert.evidence_dict
    fields = {"exact_reuse": bool(found.get("exact_reuse")), "inliers": _number(found.get("inliers"), int),
              "coverage": _number(found.get("coverage"), float), "surface": found.get("surface")}
    if not isinstance(fields["surface"], (int, float)) or isinstance(fields["surface"], bool):
        fields["surface"] = None
    known = any(k in found for k in ("exact_reuse", "inliers", "coverage"))
    return EvidenceView(verdict=alert.verdict, evidence=fields, known=known)


def _number(value: object, kind: type) -> Any:
    try:
        return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else kind(0)
    except (TypeError, ValueError, OverflowError):
        return kind(0)


def _alert_or_404(request: Request, alert_id: int) -> Alert:
    try:
        return _alerts(request).get(alert_id)
    except NotFound:
        raise WebError(404, N_("Not found.")) from None


@router.get("/alerts")
def alerts_page(request: Request, user: AlertReader, status: str = AlertStatus.new.value, page: int = 1):
    status = status if status in STATUS_LABELS or status == ALL else AlertStatus.new.value
    page = max(1, min(page, 10**6))
    rows, total = _alerts(request).list(None if status == ALL else status, limit=PAGE_SIZE,
                                        offset=(page - 1) * PAGE_SIZE)
    return render(request, "alerts.html", user=user, rows=rows, total=total, page=page, current=status,
                  pages=max(1, -(-total // PAGE_SIZE)), statuses=STATUS_LABELS, shown=shown)


@router.get("/alerts/{alert_id}")
def alert_page(request: Request, alert_id: AlertId, user: AlertReader):
    alert = _alert_or_404(request, alert_id)
    return render(request, "alerts_detail.html", user=user, alert=alert, ev=evidence_view(alert),
                  link=safe_link(alert.listing_url), shown=shown, statuses=STATUS_LABELS, sources=SOURCE_LABELS,
                  summary=shown(alert.evidence_dict.get("summary") or ""),
                  saved=request.query_params.get("saved"))


@router.post("/alerts/{alert_id}")
async def review_alert(request: Request, alert_id: AlertId, user: AlertForm, status: str = Form(""),
                       note: str = Form("")):
    if status not in STATUS_LABELS:
        raise WebError(422, N_("This address or form is not valid: go back and try again."))
    store = _alerts(request)
    try:
        # Audited as the signed-in key, in the transaction that changes the alert.
        await run_in_threadpool(store.set_status, alert_id, status, note.strip()[:2000], user.principal)
    except NotFound:
        raise WebError(404, N_("Not found.")) from None
    return redirect(request, f"/alerts/{alert_id}?saved=1")


@router.get("/alerts/{alert_id}/listing.jpg")
def listing_photo(request: Request, alert_id: AlertId, user: AlertReader):
    try:
        data = _alerts(request).thumbnail(alert_id)
    except NotFound:
        data = None
    if data is None:
        raise WebError(404, N_("Not found."))
    return finish(request, Response(data, media_type="image/jpeg"))  # no-store, as every page
