"""Web searches kept for their results page and case report, each visible to its session only.

A search's record of evidence is the audit trail (query SHA-256, results, model, index version);
this store only keeps what the pages show besides (the query photo, the full response) for the
signed-in session that ran it. It is a small SQLite file in the data directory
(``web-searches.db``), so that with several server workers a results or report link works whichever
worker answers it, and bounded: the oldest searches go first.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
)

from app.core.files import private_dir, private_file
from app.schemas import SearchResponse

FILE_NAME = "web-searches.db"

_metadata = MetaData()
_searches = Table(
    "web_searches", _metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),  # insertion order: the oldest go first
    Column("id", String(32), unique=True, nullable=False),
    Column("sid", String(64), nullable=False),
    Column("key_id", Integer, nullable=True),
    Column("key_name", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("at", DateTime, nullable=False),
    Column("response", Text, nullable=False),
    Column("display_jpeg", LargeBinary, nullable=False),
    Column("filename", String(500), nullable=False),
)


# Sessions signed out before their cookie expires: the cookie is signed, not stored, so a copy taken
# before sign-out would otherwise stay valid (a shared customs PC). Kept until the cookie would expire.
_ended = Table(
    "ended_sessions", _metadata,
    Column("sid", String(64), primary_key=True),
    Column("until", DateTime, nullable=False),
)


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


def _pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # workers read while one writes
    cur.execute("PRAGMA synchronous=NORMAL")  # a kept search is a convenience, not the evidence
    cur.close()


class SearchKeeper:
    def __init__(self, data_dir: Path, capacity: int):
        self.capacity = capacity
        data_dir = Path(data_dir)
        private_dir(data_dir)
        private_file(data_dir / FILE_NAME)  # query photos of officers: this user only, -wal and -shm alike
        self.engine = create_engine(f"sqlite:///{data_dir / FILE_NAME}",
                                    connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(self.engine, "connect", _pragmas)
        _metadata.create_all(self.engine)

    def keep(self, *, sid: str, key_id: int | None, key_name: str, role: str, response: SearchResponse,
             display_jpeg: bytes, filename: str) -> KeptSearch:
        item = KeptSearch(id=secrets.token_urlsafe(12), sid=sid, key_id=key_id, key_name=key_name, role=role,
                          at=dt.datetime.now(dt.timezone.utc), response=response, display_jpeg=display_jpeg,
                          filename=filename)
        with self.engine.begin() as conn:
            key = conn.execute(insert(_searches).values(
                id=item.id, sid=sid, key_id=key_id, key_name=key_name, role=role, at=item.at.replace(tzinfo=None),
                response=response.model_dump_json(), display_jpeg=display_jpeg, filename=filename,
            )).inserted_primary_key
            assert key is not None  # a one-row INSERT reports the key it gave the row
            n = key[0]
            conn.execute(delete(_searches).where(_searches.c.n <= n - self.capacity))
        return item

    def get(self, search_id: str, sid: str, key_id: int | None) -> KeptSearch | None:
        """The search if this session (and this key) ran it; None for any other, so ids reveal nothing."""
        with self.engine.connect() as conn:
            row = conn.execute(select(_searches).where(_searches.c.id == search_id)).mappings().first()
        if row is None or row["sid"] != sid or row["key_id"] != key_id:
            return None
        return KeptSearch(id=row["id"], sid=row["sid"], key_id=row["key_id"], key_name=row["key_name"],
                          role=row["role"], at=row["at"].replace(tzinfo=dt.timezone.utc),
                          response=SearchResponse.model_validate_json(row["response"]),
                          display_jpeg=bytes(row["display_jpeg"]), filename=row["filename"])

    def end_session(self, sid: str, max_age_s: int) -> None:
        """Sign a session out for good, and drop the searches it kept (their query photos)."""
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        with self.engine.begin() as conn:
            conn.execute(delete(_ended).where(_ended.c.until < now))
            conn.execute(delete(_ended).where(_ended.c.sid == sid))
            conn.execute(insert(_ended).values(sid=sid, until=now + dt.timedelta(seconds=max_age_s)))
            conn.execute(delete(_searches).where(_searches.c.sid == sid))

    def session_ended(self, sid: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(_ended.c.sid).where(_ended.c.sid == sid)).first() is not None

    def close(self) -> None:
        self.engine.dispose()
