"""Tables of the web pages' own state, in the registry database so that any replica serves any signed-in officer:
the searches kept for their results page and case report, and the sessions signed out before their cookie expires."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class WebSearch(Base):
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
