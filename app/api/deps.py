"""The API's route dependencies as ``Annotated`` aliases: the shared service and audit trail, the
calling key with the permissions a route needs, row ids in paths. Routes take their dependencies from here
only (uploads are read with ``app.http.requests.read_upload``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.params import Depends as DependsParam

from app.http.requests import DB_ID_MAX, get_audit, get_service, require, row_id
from app.jobs.archive import ListingArchive
from app.registry.alerts import AlertStore, WebhookStore
from app.schemas import ErrorResponse
from app.security.actor import Principal
from app.security.audit import AuditLog
from app.security.roles import Permission
from app.service import MatchingService

# Errors every /v1 endpoint may answer, for the OpenAPI schema.
PROTECTED_RESPONSES: dict[int | str, dict] = {
    401: {"model": ErrorResponse, "description": "No API key, or an unknown or revoked one."},
    403: {"model": ErrorResponse, "description": "The key's role does not allow this."},
    413: {"model": ErrorResponse, "description": "Request or file over the size limit."},
    422: {"model": ErrorResponse, "description": "Invalid request."},
    429: {"model": ErrorResponse, "description": "Too many requests for this key; see Retry-After."},
}

ServiceDep = Annotated[MatchingService, Depends(get_service)]
AuditDep = Annotated[AuditLog, Depends(get_audit)]

ArtefactId = Annotated[int, row_id("artefact")]
PhotoId = Annotated[int, row_id("photo")]
KeyId = Annotated[int, row_id("key")]
RowOffset = Annotated[int, Query(ge=0, le=DB_ID_MAX)]  # rows to skip in a listing: a database integer too


def allowed(*permissions: Permission) -> list[DependsParam]:
    """Route or router ``dependencies`` that let a request through when its key has any of these."""
    return [Depends(require(*permissions))]


# The calling key, for routes whose answer depends on who asks.
Searcher = Annotated[Principal, Depends(require(Permission.search))]
ArtefactReader = Annotated[Principal, Depends(require(Permission.read_any_artefact, Permission.read_matched_artefact))]
PhotoViewer = Annotated[Principal, Depends(require(Permission.read_any_photo, Permission.read_matched_photo,
                                                   Permission.thumb_matched_photo))]


def get_archive(request: Request) -> ListingArchive | None:
    return getattr(request.app.state, "listing_archive", None)


ArchiveDep = Annotated[ListingArchive | None, Depends(get_archive)]  # None: HM_ARCHIVE=false


def get_alerts(service: ServiceDep) -> AlertStore:
    return AlertStore(service.store.sessions)


def get_webhooks(service: ServiceDep) -> WebhookStore:
    return WebhookStore(service.store.sessions, allow_private=service.settings.webhook_allow_private)


# Alerts (a registry object seen in a listing) and the webhook endpoints told of new ones.
AlertsDep = Annotated[AlertStore, Depends(get_alerts)]
WebhooksDep = Annotated[WebhookStore, Depends(get_webhooks)]
AlertId = Annotated[int, row_id("alert")]
WebhookId = Annotated[int, row_id("webhook endpoint")]
