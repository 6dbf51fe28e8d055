"""A search as a key runs it: the service's search, what the key's role may see of it, the audit record.

The API (`POST /v1/search`) and the web search page both end here, so a search from a phone is
the same search, filtered and recorded the same way, as one from a script.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from app.core.errors import AppError
from app.core.files import sha256_hex
from app.jobs.archive import ListingArchive
from app.jobs.market import draft_alert
from app.registry.alerts import AlertStore
from app.registry.archive import ListingFacts
from app.schemas import SearchResponse, photo_url
from app.security.actor import UNAUTHENTICATED, Principal
from app.security.audit import AuditLog
from app.security.roles import VISIBLE_VERDICTS, Role
from app.service import MatchingService

log = logging.getLogger(__name__)


def audited_search(service: MatchingService, audit: AuditLog, principal: Principal, data: bytes,
                   top_k: int | None = None, listing: ListingFacts | None = None,
                   archive: ListingArchive | None = None) -> SearchResponse:
    """Search ``data`` for ``principal``; blocking (run it in a thread pool from async code).

    A monitor's search that names its listing (``listing``) also goes into the listings archive, and a
    `match` in it raises an alert, as a scan's would.
    """
    try:
        if listing is not None and archive is not None and principal.role == Role.monitor:
            response = _search_listing(service, archive, data, top_k, listing)
        else:
            response = service.search(data, top_k)
    except AppError as exc:  # refused searches are evidence of probing too
        audit.record_search(query_sha256=sha256_hex(data) if data else None, outcome=exc.code,
                            fingerprint=service.fingerprint, principal=principal)
        raise
    visible = VISIBLE_VERDICTS.get(Role(principal.role))
    if visible is not None:
        # Only candidates the role may open: near misses would list the registry to a prober.
        response.results = [r for r in response.results if r.verdict in visible]
    if principal.role == Role.monitor:
        for r in response.results:  # a monitor sees thumbnails only
            r.photo_url = photo_url(r.photo_id, thumb=True)
    response.audit_id = audit.record_search(response, principal=principal)
    return response


def _search_listing(service: MatchingService, archive: ListingArchive, data: bytes, top_k: int | None,
                    listing: ListingFacts) -> SearchResponse:
    t0 = time.perf_counter()
    service.check_index()
    decoded = service.decode(data)
    vectors: list[np.ndarray | None] = []
    response = service.search_images([decoded], top_k, started=t0, frame_vectors=vectors)[0]
    try:  # the archive is a record of the market: its failure must not cost the monitor its answer
        recorded = archive.record_listing_photo(listing, decoded, vectors[0] if vectors else None, data=data,
                                                source="api", sync_index=False)  # see MarketRecorder.record
        alerts = AlertStore(service.store.sessions)
        for r in response.results:
            if r.verdict == "match":
                alerts.raise_alert(draft_alert(r.model_dump(mode="json"), listing, decoded, source="search",
                                               archive_photo_id=recorded.photo_id, fingerprint=service.fingerprint))
    except Exception:
        log.exception("A monitor's listing photo could not be archived")
    return response


async def record_refused_search(scope: Scope, outcome: str, principal: Principal | None,
                                details: dict | None = None) -> None:
    """A search request refused before or outside ``audited_search`` (see the middleware
    ``AuditRefusedSearches``): audited as ``audited_search`` audits the searches it refuses, under the key
    that sent it, or ``UNAUTHENTICATED`` when none was known."""
    state = scope["app"].state if "app" in scope else None
    audit, service = getattr(state, "audit", None), getattr(state, "service", None)
    if audit is None or service is None:
        return
    await run_in_threadpool(audit.record_search, outcome=outcome, fingerprint=service.fingerprint,
                            principal=principal or UNAUTHENTICATED, details=details)
