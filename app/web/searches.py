"""Web searches kept for their results page and case report, each visible to its session only, and the
sessions signed out before their cookie expires.

A search's record of evidence is the audit trail (query SHA-256, results, model, index version);
this store only keeps what the pages show besides (the query photo, the full response) for the
signed-in session that ran it. Both live in the registry database (tables ``web_searches`` and
``ended_sessions``, ``app.security.models``), so that a results or report link, or a sign-out, holds whichever
server process or replica answers the next request. The kept searches are bounded: the oldest go first.

Earlier versions kept them in ``web-searches.db`` in the data directory: that file is no longer read and may be
deleted (it holds the query photos of the searches it kept).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import is_unique_violation, utcnow
from app.schemas import SearchResponse
from app.security.models import EndedSession, WebSearch

# Bulk deletes: no object of this session needs to learn of them.
_NO_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class KeptSearch:
    id: str
    sid: str  # the web session that ran it
    key_id: int | None
    key_name: str
    role: str
    at: dt.datetime  # UTC
    response: SearchResponse
    display_jpeg: bytes  # the query photo, decoded, upright and re-encoded so any browser shows it
    filename: str


class SearchKeeper:
    """The kept searches and ended sessions in the registry database. ``database`` is its engine, or a callable
    that gives it on each use (the app's service, which holds the engine, is made when the app starts)."""

    def __init__(self, database: Engine | Callable[[], Engine], capacity: int):
        self.capacity = capacity
        self._engine: Callable[[], Engine] = database if callable(database) else (lambda: database)

    def _session(self) -> Session:
        return Session(self._engine(), expire_on_commit=False)

    def keep(self, *, sid: str, key_id: int | None, key_name: str, role: str, response: SearchResponse,
             display_jpeg: bytes, filename: str) -> KeptSearch:
        item = KeptSearch(id=secrets.token_urlsafe(12), sid=sid, key_id=key_id, key_name=key_name, role=role,
                          at=dt.datetime.now(dt.timezone.utc), response=response, display_jpeg=display_jpeg,
                          filename=filename)
        with self._session() as s, s.begin():
            row = WebSearch(id=item.id, sid=sid, key_id=key_id, key_name=key_name, role=role,
                            at=item.at.replace(tzinfo=None), response=response.model_dump_json(),
                            display_jpeg=display_jpeg, filename=filename)
            s.add(row)
            s.flush()  # gives the row its place in the insertion order
            # The oldest beyond capacity go. Rows that another process is deleting at the same moment are
            # skipped, not waited for (PostgreSQL; SQLite has one writer): two replicas keeping searches at once
            # neither block nor deadlock each other, and what one skips the other deletes. Numbers lost to
            # rolled-back inserts may keep the store a few under its capacity.
            oldest = (select(WebSearch.n).where(WebSearch.n <= row.n - self.capacity)
                      .with_for_update(skip_locked=True))
            s.execute(delete(WebSearch).where(WebSearch.n.in_(oldest.scalar_subquery())), execution_options=_NO_SYNC)
        return item

    def get(self, search_id: str, sid: str, key_id: int | None) -> KeptSearch | None:
        """The search if this session (and this key) ran it; None for any other, so ids reveal nothing."""
        with self._session() as s:
            row = s.scalar(select(WebSearch).where(WebSearch.id == search_id))
        if row is None or row.sid != sid or row.key_id != key_id:
            return None
        return KeptSearch(id=row.id, sid=row.sid, key_id=row.key_id, key_name=row.key_name, role=row.role,
                          at=row.at.replace(tzinfo=dt.timezone.utc),
                          response=SearchResponse.model_validate_json(row.response),
                          display_jpeg=bytes(row.display_jpeg), filename=row.filename)

    def end_session(self, sid: str, max_age_s: int) -> None:
        """Sign a session out for good, and drop the searches it kept (their query photos)."""
        now = utcnow()
        until = now + dt.timedelta(seconds=max_age_s)
        try:
            with self._session() as s, s.begin():
                ended = s.get(EndedSession, sid, with_for_update=True)
                if ended is None:
                    s.add(EndedSession(sid=sid, until=until))
                else:
                    ended.until = max(ended.until, until)
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            # Signed out on another replica at the same moment (a double click): ended there, as wanted.
        with self._session() as s, s.begin():
            s.execute(delete(WebSearch).where(WebSearch.sid == sid), execution_options=_NO_SYNC)
            # Sessions whose cookie has expired by now need no record; those another process is deleting are
            # skipped, not waited for.
            expired = select(EndedSession.sid).where(EndedSession.until < now).with_for_update(skip_locked=True)
            s.execute(delete(EndedSession).where(EndedSession.sid.in_(expired.scalar_subquery())),
                      execution_options=_NO_SYNC)

    def session_ended(self, sid: str) -> bool:
        with self._session() as s:
            return s.scalar(select(EndedSession.sid).where(EndedSession.sid == sid)) is not None
