"""The audit trail: every search and every registry change, append-only.

Registry changes are recorded by the store inside the transaction that makes them (a change and its
record commit together or not at all); searches are recorded by whoever runs them (API, CLI) with
the query photo's SHA-256, the results with scores and verdicts, the model fingerprint and the index
version. There is no code path that updates or deletes an event, and database triggers refuse it (SQLite and
PostgreSQL: ``app/migrations/append_only.py``; on PostgreSQL the service's role may not even try,
deploy/postgres-roles.sql).
"""

from __future__ import annotations

import datetime as dt
import json
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.files import private_opener
from app.security.actor import Principal, current_principal
from app.security.models import AuditEvent, AuditResult
from app.security.roles import GRANTING_VERDICTS, Role


def record_event(
    s: Session,
    action: str,
    *,
    outcome: str = "ok",
    query_sha256: str | None = None,
    artefact_id: int | None = None,
    details: dict | None = None,
    model_fingerprint: str | None = None,
    index_version: int | None = None,
    results: Iterable[tuple[int, int, float, str]] = (),
    principal: Principal | None = None,
) -> int:
    """Add one event (and its results: artefact id, photo id, score, verdict) to session ``s``."""
    who = principal or current_principal()
    row = AuditEvent(
        key_id=who.key_id, key_name=who.name, role=Role(who.role).value, action=action, outcome=outcome,
        query_sha256=query_sha256, artefact_id=artefact_id,
        details=json.dumps(details, default=str, ensure_ascii=False) if details else None,
        model_fingerprint=model_fingerprint, index_version=index_version,
    )
    s.add(row)
    s.flush()
    for rank, (artefact, photo, score, verdict) in enumerate(results):
        s.add(AuditResult(audit_id=row.id, rank=rank, artefact_id=artefact, photo_id=photo, score=float(score),
                          verdict=verdict))
    return row.id


# The ids of the search events recorded in the current context while a request watches (``watching_searches``).
_watched: ContextVar[list[int] | None] = ContextVar("heritage_match_search_events", default=None)


@contextmanager
def watching_searches() -> Iterator[list[int]]:
    """Collect the ids of the search events recorded in this block (in the threads it starts too): the HTTP
    layer records a search request that ends without one as refused, whoever refused it."""
    recorded: list[int] = []
    token = _watched.set(recorded)
    try:
        yield recorded
    finally:
        _watched.reset(token)


class AuditLog:
    def __init__(self, sessions: sessionmaker):
        self.sessions = sessions

    def record(self, action: str, **fields) -> int:
        with self.sessions.begin() as s:
            return record_event(s, action, **fields)

    def record_search(self, response=None, *, query_sha256: str | None = None, outcome: str = "ok",
                      fingerprint: str | None = None, principal: Principal | None = None,
                      details: dict | None = None) -> int:
        """A search and what it returned (a SearchResponse), or its failure (``outcome`` = error code)."""
        results = []
        index_version = None
        if response is not None:
            query_sha256 = response.query.sha256
            fingerprint = response.model.fingerprint
            index_version = response.index_version
            results = [(r.artefact_id, r.photo_id, r.score, r.verdict) for r in response.results]
        event_id = self.record("search", outcome=outcome, query_sha256=query_sha256, model_fingerprint=fingerprint,
                               index_version=index_version, results=results, principal=principal, details=details)
        watched = _watched.get()
        if watched is not None:
            watched.append(event_id)
        return event_id

    def matched(self, principal: Principal, artefact_id: int, since: dt.datetime | None = None) -> bool:
        """Whether a search by this key returned this artefact with a verdict that opens it to the role.

        ``since``: the artefact's creation time, so a grant never passes to a later artefact that
        re-uses a deleted one's id.
        """
        verdicts = GRANTING_VERDICTS.get(Role(principal.role))
        if principal.key_id is None or not verdicts:
            return False
        query = (
            select(AuditResult.audit_id).join(AuditEvent, AuditEvent.id == AuditResult.audit_id)
            .where(AuditEvent.key_id == principal.key_id, AuditEvent.action == "search",
                   AuditResult.artefact_id == artefact_id, AuditResult.verdict.in_(verdicts))
            .limit(1)
        )
        if since is not None:
            query = query.where(AuditEvent.at >= since)
        with self.sessions() as s:
            return s.scalar(query) is not None

    def events(self, after_id: int = 0, batch: int = 1000) -> Iterator[AuditEvent]:
        """Every event in order, read in batches."""
        while True:
            with self.sessions() as s:
                rows = list(s.scalars(select(AuditEvent).where(AuditEvent.id > after_id)
                                      .order_by(AuditEvent.id).limit(batch)))
            if not rows:
                return
            yield from rows
            after_id = rows[-1].id

    def export_jsonl(self, out: Path) -> int:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with open(out, "w", encoding="utf-8", opener=private_opener) as f:  # the trail names keys and queries
            for ev in self.events():
                f.write(json.dumps(event_dict(ev), ensure_ascii=False) + "\n")
                n += 1
        return n


def event_dict(ev: AuditEvent) -> dict:
    return {
        "id": ev.id, "at": ev.at.isoformat() + "Z", "key_id": ev.key_id, "key_name": ev.key_name, "role": ev.role,
        "action": ev.action, "outcome": ev.outcome, "query_sha256": ev.query_sha256, "artefact_id": ev.artefact_id,
        "details": json.loads(ev.details) if ev.details else None, "model_fingerprint": ev.model_fingerprint,
        "index_version": ev.index_version,
        "results": [{"artefact_id": r.artefact_id, "photo_id": r.photo_id, "score": r.score, "verdict": r.verdict}
                    for r in ev.results],
    }
