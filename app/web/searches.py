"""Web searches kept for their results page and case report, in memory, each visible to its session only.

A search's record of evidence is the audit trail (query SHA-256, results, model, index version);
this store only keeps what the pages show besides (the query photo, the full response) for the
signed-in session that ran it. It is per server process and bounded: the oldest go first.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

from app.schemas import SearchResponse


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
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, KeptSearch] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, *, sid: str, key_id: int | None, key_name: str, role: str, response: SearchResponse,
             display_jpeg: bytes, filename: str) -> KeptSearch:
        item = KeptSearch(id=secrets.token_urlsafe(12), sid=sid, key_id=key_id, key_name=key_name, role=role,
                          at=dt.datetime.now(dt.timezone.utc), response=response, display_jpeg=display_jpeg,
                          filename=filename)
        with self._lock:
            self._items[item.id] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return item

    def get(self, search_id: str, sid: str, key_id: int | None) -> KeptSearch | None:
        """The search if this session (and this key) ran it; None for any other, so ids reveal nothing."""
        with self._lock:
            item = self._items.get(search_id)
        if item is None or item.sid != sid or item.key_id != key_id:
            return None
        return item
