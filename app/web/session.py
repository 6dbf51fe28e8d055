"""The web session: a signed cookie that holds the API key's id (never the key) and a CSRF token.

The key is looked up again on every request, so revoking it or changing its role takes effect at
once; the cookie itself is HttpOnly and SameSite=Strict, and every form carries the session's CSRF
token, checked on POST.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from app.core.config import Settings
from app.security.actor import Principal

COOKIE = "hm_session"
SALT = "heritage-match web session"


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
    def __init__(self, settings: Settings):
        self.max_age = int(settings.web_session_hours * 3600)
        self.secure = settings.web_cookie_secure
        self.serializer = URLSafeTimedSerializer(_secret(settings), salt=SALT)

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


def _secret(settings: Settings) -> str:
    """HM_WEB_SECRET, or a random secret kept beside the registry so every worker signs alike."""
    if settings.web_secret:
        return settings.web_secret
    path = Path(settings.data_dir) / "web-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:  # exclusive create: of two workers starting together, one writes and both read its secret
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
    except FileExistsError:
        pass
    return path.read_text().strip()
