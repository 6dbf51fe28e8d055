"""The web session: a signed cookie that holds the API key's id (never the key) and a CSRF token.

The key is looked up again on every request, so revoking it or changing its role takes effect at
once; the cookie itself is HttpOnly and SameSite=Strict, and every form carries the session's CSRF
token, checked on POST. The key that signs cookies is HM_WEB_SECRET, else a random one kept in the registry
database (``service_secrets``), so that every process and replica on that database accepts the others' cookies.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from app.core.config import Settings
from app.core.db import is_unique_violation
from app.security.actor import Principal
from app.security.models import ServiceSecret

log = logging.getLogger(__name__)

COOKIE = "hm_session"
SALT = "heritage-match web session"
SECRET_NAME = "web_session"  # its row in service_secrets
LEGACY_SECRET_FILE = "web-secret"  # where earlier versions kept it, in the data directory


@dataclass(frozen=True)
class WebSession:
    sid: str  # random per sign-in: searches kept for the case report belong to it
    csrf: str
    key_id: int | None = None  # None: not signed in (the sign-in form still needs a CSRF token)

    @classmethod
    def anonymous(cls) -> "WebSession":
        return cls(sid=secrets.token_urlsafe(16), csrf=secrets.token_urlsafe(32))

    @classmethod
    def signed_in(cls, key_id: int) -> "WebSession":
        # A fresh id and token at sign-in: nothing fixed before it carries over.
        return cls(sid=secrets.token_urlsafe(16), csrf=secrets.token_urlsafe(32), key_id=key_id)

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), str(token).encode())


@dataclass(frozen=True)
class WebUser:
    """A signed-in session and the principal of its key, as read on this request."""

    session: WebSession
    principal: Principal


class SessionCodec:
    """Reads and writes the session cookie. ``database`` is the registry database's engine, or a callable that
    gives it: the secret is read from it at the first cookie (the app's service, which holds the engine, is made
    when the app starts, after the codec)."""

    def __init__(self, settings: Settings, database: Engine | Callable[[], Engine]):
        self.max_age = int(settings.web_session_hours * 3600)
        self.secure = settings.web_cookie_secure
        self._settings = settings
        self._engine: Callable[[], Engine] = database if callable(database) else (lambda: database)
        self._serializer: URLSafeTimedSerializer | None = None
        self._lock = threading.Lock()

    @property
    def serializer(self) -> URLSafeTimedSerializer:
        if self._serializer is None:
            with self._lock:
                if self._serializer is None:
                    self._serializer = URLSafeTimedSerializer(_secret(self._settings, self._engine), salt=SALT)
        return self._serializer

    def read(self, request: Request) -> WebSession | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = self.serializer.loads(raw, max_age=self.max_age)
            return WebSession(sid=str(data["s"]), csrf=str(data["c"]),
                              key_id=int(data["k"]) if data.get("k") is not None else None)
        except (BadSignature, KeyError, TypeError, ValueError):
            return None

    def write(self, response: Response, request: Request, session: WebSession) -> None:
        value = self.serializer.dumps({"s": session.sid, "c": session.csrf, "k": session.key_id})
        secure = self.secure if self.secure is not None else request.url.scheme == "https"
        response.set_cookie(COOKIE, value, max_age=self.max_age, path="/", httponly=True, samesite="strict",
                            secure=secure)


def _secret(settings: Settings, engine: Callable[[], Engine]) -> str:
    """HM_WEB_SECRET, or the random secret in the registry database, made by whichever process needs it first."""
    if settings.web_secret:
        return settings.web_secret
    stored = _stored_secret(engine())
    if stored is not None:
        return stored
    # None yet. A secret an earlier version kept in this data directory is stored, so that its cookies stay
    # valid; else a new one.
    legacy = _legacy_secret(Path(settings.data_dir))
    try:
        with Session(engine()) as s, s.begin():
            s.add(ServiceSecret(name=SECRET_NAME, value=legacy or secrets.token_urlsafe(48)))
    except IntegrityError as exc:
        if not is_unique_violation(exc):
            raise
        # Another process stored one at the same moment: every process uses that one.
    else:
        if legacy:
            log.info("The web session secret of %s is now kept in the registry database; the file may be deleted.",
                     Path(settings.data_dir) / LEGACY_SECRET_FILE)
    stored = _stored_secret(engine())
    assert stored is not None  # stored above, here or by another process; secrets are never deleted
    return stored


def _stored_secret(engine: Engine) -> str | None:
    with Session(engine) as s:
        row = s.get(ServiceSecret, SECRET_NAME)
        return row.value if row is not None else None


def _legacy_secret(data_dir: Path) -> str | None:
    try:
        return (data_dir / LEGACY_SECRET_FILE).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None
