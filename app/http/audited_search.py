"""A search as a key runs it: the service's search, what the key's role may see of it, the audit record.

The API (`POST /v1/search`) and the web search page both end here, so a search from a phone is
the same search, filtered and recorded the same way, as one from a script.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from app.core.errors import AppError
from app.core.files import sha256_hex
from app.schemas import SearchResponse, photo_url
from app.security.actor import UNAUTHENTICATED, Principal
from app.security.audit import AuditLog
from app.security.roles import VISIBLE_VERDICTS, Role
from app.service import MatchingService


def audited_search(service: MatchingService, audit: AuditLog, principal: Principal, data: bytes,
                   top_k: int | None = None) -> SearchResponse:
    """Search ``data`` for ``principal``; blocking (run it in a thread pool from async code)."""
    try:
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
