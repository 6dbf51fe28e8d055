"""The registry's change feed: one row per change that a replica's index must follow.

Every transaction that adds or removes photos, or stores vectors, appends a row here in the same transaction
(``record_change``), so the feed can never disagree with the registry. Each replica follows it
(``app.jobs.follow.IndexFollower``) and applies the rows it has not seen to the index in its memory.

Order: a follower reads ``seq > last seen``, so a row must never become visible after a row with a higher
``seq``. PostgreSQL gives sequence values at insert, not at commit; ``record_change`` therefore takes the
table's lock before inserting (held to the commit, a few milliseconds at the end of a registration), so rows
commit in ``seq`` order. SQLite has one writer at a time anyway. On PostgreSQL the insert also sends a
NOTIFY, delivered at commit, which wakes the followers at once; they poll as well, in case a notification
is lost with its connection.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from sqlalchemy import DateTime, Integer, String, Text, func, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.core.db import Base, utcnow

CHANNEL = "hm_registry_changes"  # PostgreSQL LISTEN/NOTIFY channel

PHOTOS_ADDED = "photos_added"  # photo ids whose vectors (of ``fingerprint``) are now stored
PHOTOS_REMOVED = "photos_removed"  # photo ids deleted with their vectors
INDEX_REBUILT = "index_rebuilt"  # every replica rebuilds from the stored vectors of ``fingerprint``


class RegistryChange(Base):
    __tablename__ = "registry_changes"
    __table_args__ = {"sqlite_autoincrement": True}  # seq never reused: a follower's position stays valid

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    fingerprint: Mapped[str | None] = mapped_column(String(120), nullable=True)
    photo_ids: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


@dataclass(frozen=True)
class Change:
    seq: int
    kind: str
    fingerprint: str | None
    photo_ids: list[int]


def record_change(s: Session, kind: str, photo_ids: list[int] | None = None, fingerprint: str | None = None) -> None:
    """Append a change in the caller's transaction (call it last, just before the commit: see the module)."""
    if not photo_ids and kind != INDEX_REBUILT:
        return
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("LOCK TABLE registry_changes IN EXCLUSIVE MODE"))
        s.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})
    s.add(RegistryChange(kind=kind, fingerprint=fingerprint, photo_ids=json.dumps([int(i) for i in photo_ids or []])))
    s.flush()


def changes_after(s: Session, seq: int, limit: int = 1000) -> list[Change]:
    rows = s.scalars(select(RegistryChange).where(RegistryChange.seq > seq).order_by(RegistryChange.seq).limit(limit))
    return [Change(r.seq, r.kind, r.fingerprint, [int(i) for i in json.loads(r.photo_ids)]) for r in rows]


def last_seq(s: Session) -> int:
    return int(s.scalar(select(func.max(RegistryChange.seq))) or 0)


def purge_before(s: Session, before: dt.datetime) -> int:
    """Drop rows older than ``before`` (kept a day: a replica that was away longer rebuilds at start)."""
    old = s.scalars(select(RegistryChange.seq).where(RegistryChange.at < before)).all()
    if old:
        s.query(RegistryChange).filter(RegistryChange.seq.in_(old)).delete(synchronize_session=False)
    return len(old)
