"""Tables of API keys, the audit trail, shared secrets, rate limits and web sessions' state, in the registry's
database (so that every replica behind a load balancer sees them alike)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import APPEND_ONLY, Base, utcnow


class ApiKey(Base):
    """A key is shown once at creation; only its SHA-256 is stored (the token is 256 random bits,
    so a fast hash is as safe as a slow one and lookups stay one indexed query)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a key in lists
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class AuditEvent(Base):
    """One search or registry change. Append-only: nothing in the code updates or deletes a row, and
    triggers refuse it, on SQLite and PostgreSQL (``app/migrations/append_only.py``)."""

    __tablename__ = "audit_events"
    __table_args__ = {"info": {APPEND_ONLY: ("id",)}}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, index=True)  # no FK: keys come and go, the trail stays
    key_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(40), index=True)
    outcome: Mapped[str] = mapped_column(String(40), default="ok")  # "ok" or the error code
    query_sha256: Mapped[str | None] = mapped_column(String(64))
    artefact_id: Mapped[int | None] = mapped_column(Integer)  # the artefact a registry change touched
    details: Mapped[str | None] = mapped_column(Text)  # JSON
    model_fingerprint: Mapped[str | None] = mapped_column(String(120))
    index_version: Mapped[int | None] = mapped_column(Integer)

    results: Mapped[list["AuditResult"]] = relationship(order_by="AuditResult.rank", lazy="selectin")


class AuditResult(Base):
    """A search's results, one row each, so "did this key's searches match artefact X" is one query."""

    __tablename__ = "audit_results"
    __table_args__ = {"info": {APPEND_ONLY: ("audit_id", "rank")}}

    audit_id: Mapped[int] = mapped_column(ForeignKey("audit_events.id"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    artefact_id: Mapped[int] = mapped_column(Integer, index=True)
    photo_id: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(20))


class ServiceSecret(Base):
    """A secret every replica must share (the key that signs web session cookies), made once by whichever
    process needs it first, when no setting gives it."""

    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RateBucket(Base):
    """One key's token bucket, shared by every replica (``app.security.ratelimit.SharedRateLimiter``)."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)  # limiter name and key
    tokens: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float, index=True)  # seconds since the epoch, the database's clock


class WebSearch(Base):
    """A web search kept for its results page and case report (app.web.searches)."""

    __tablename__ = "web_searches"
    __table_args__ = {"sqlite_autoincrement": True}

    n: Mapped[int] = mapped_column(Integer, primary_key=True)  # insertion order: the oldest go first
    id: Mapped[str] = mapped_column(String(32), unique=True)
    sid: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    at: Mapped[dt.datetime] = mapped_column(DateTime)
    response: Mapped[str] = mapped_column(Text)
    display_jpeg: Mapped[bytes] = mapped_column(LargeBinary)
    filename: Mapped[str] = mapped_column(String(500))


class EndedSession(Base):
    """A session signed out before its cookie expires: the cookie is signed, not stored, so a copy taken before
    sign-out would otherwise stay valid (a shared customs PC). Kept until the cookie would expire."""

    __tablename__ = "ended_sessions"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    until: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
