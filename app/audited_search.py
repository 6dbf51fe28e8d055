"""A search as a key runs it: the service's search, what the key's role may see of it, the audit record.

The API (`POST /v1/search`) and the web search page both end here, so a search from a phone is
the same search, filtered and recorded the same way, as one from a script.
"""

from __future__ import annotations

from app.errors import AppError
from app.imaging import sha256_hex
from app.schemas import SearchResponse
from app.security.actor import Principal
from app.security.audit import AuditLog
from app.security.roles import MONITOR_VISIBLE_VERDICTS, Role
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
    if principal.role == Role.monitor:
        # Matches only, with thumbnail links: probing learns nothing from near misses.
        response.results = [r for r in response.results if r.verdict in MONITOR_VISIBLE_VERDICTS]
        for r in response.results:
            r.photo_url = f"/v1/photos/{r.photo_id}?size=thumb"
    response.audit_id = audit.record_search(response, principal=principal)
    return response
