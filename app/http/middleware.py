"""ASGI middleware: security headers, API-key authentication with rate limits, request size limit.

Authentication and the size limit are ASGI middleware rather than route dependencies because
FastAPI parses a request's body before it runs dependencies: a request without a valid key, or over
its rate, is refused before a byte of its body is read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.audited_search import record_refused_search
from app.http.errors import SEARCH_PATH, error_body, web_error_page
from app.http.requests import BAD_KEY_MESSAGE, NO_KEY_MESSAGE
from app.security.actor import ANONYMOUS, Principal, reset_principal, set_principal
from app.security.ratelimit import RateLimiter

log = logging.getLogger(__name__)

PROTECTED_PREFIX = "/v1"

# The docs pages need their inline start-up script; everything else may load nothing at all.
HTML_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
OTHER_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


class SecurityHeaders:
    """Headers that keep browsers from sniffing, framing or leaking what the service sends."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                html = headers.get("content-type", "").startswith("text/html")
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
                headers.setdefault("Content-Security-Policy", HTML_CSP if html else OTHER_CSP)
                if scope["path"].startswith(PROTECTED_PREFIX):
                    # Search results and records are case material: no shared or browser cache keeps them.
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if started:
                raise
            # Starlette's own 500 answer comes from outside this middleware, without these headers (and
            # without no-store on case material): answer here, and log what happened.
            log.exception("unhandled error on %s %s", scope.get("method"), scope["path"])
            response = JSONResponse(error_body("internal_error", "An unexpected error happened; it has been logged."),
                                    status_code=500)
            await response(scope, receive, send_with_headers)


def client_address(scope: Scope) -> str:
    """The peer's address. Behind a proxy named in ``HM_FORWARDED_ALLOW_IPS`` uvicorn puts the client's
    from ``X-Forwarded-For`` here; else it is the connection's own (``heritage-match serve``)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


class Authenticate:
    """Every request under /v1 needs a valid API key (``Authorization: Bearer``) within its rate.

    The key's principal goes to ``request.state.principal`` for the permission checks of the routes,
    and to the audit trail's context for the registry changes the request makes.
    """

    def __init__(self, app: ASGIApp, enabled: bool, limiter: RateLimiter, failures: RateLimiter | None = None):
        self.app = app
        self.enabled = enabled
        self.limiter = limiter
        self.failures = failures or RateLimiter(0, 1)  # unknown keys per client address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _protected(scope["path"]):
            return await self.app(scope, receive, send)
        client = client_address(scope)
        has_key = "authorization" in Headers(scope=scope)
        wait = self.failures.pending(client) if has_key else 0.0
        if wait > 0:  # this address sent too many unknown keys: it waits before trying another
            retry = RateLimiter.retry_after_header(wait)
            response = JSONResponse(error_body("rate_limited", f"Too many unknown API keys from this address; "
                                               f"retry in {retry} s."), status_code=429, headers={"Retry-After": retry})
            return await response(scope, receive, send)
        principal = self._principal(scope)
        if principal is None:
            if has_key:
                self.failures.check(client)
            response = JSONResponse(error_body("unauthorized", BAD_KEY_MESSAGE if has_key else NO_KEY_MESSAGE),
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        wait = self.limiter.check(principal.key_id if principal.key_id is not None else principal.name)
        if wait > 0:
            retry = RateLimiter.retry_after_header(wait)
            response = JSONResponse(
                error_body("rate_limited", f"Too many requests for this key; retry in {retry} s."),
                status_code=429, headers={"Retry-After": retry})
            return await response(scope, receive, send)
        scope.setdefault("state", {})["principal"] = principal
        token = set_principal(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_principal(token)

    def _principal(self, scope: Scope) -> Principal | None:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return scope["app"].state.keys.authenticate(token.strip())


class BodySizeLimit:
    """Refuse a request body over ``limit`` bytes as it streams in, Content-Length or not.

    The multipart parser would otherwise spool a whole chunked upload to disk before any route
    could look at its size. Over the limit, reading stops and the answer is 413 whatever the inner
    app made of the cut-off body. Requests to ``multi_paths`` (regular expressions of paths that may
    carry several photos, each still checked on its own) get ``multi_limit``.
    """

    def __init__(self, app: ASGIApp, limit: int, limit_mb: float, multi_limit: int | None = None,
                 multi_limit_mb: float | None = None, multi_paths: Iterable[str] = ()):
        self.app = app
        self.limits = {False: (limit, limit_mb), True: (multi_limit or limit, multi_limit_mb or limit_mb)}
        self.multi_paths = re.compile("^(" + "|".join(multi_paths) + ")/?$") if multi_paths else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, limit_mb = self.limits[bool(self.multi_paths and self.multi_paths.match(scope["path"]))]
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return await self._refuse(scope, receive, send, limit_mb)
        received = 0
        over = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # the inner app's answer to a cut-off body is replaced by 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        if over and not started:
            await self._refuse(scope, receive, send, limit_mb)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit_mb: float) -> None:
        if scope["path"] == SEARCH_PATH:
            await record_refused_search(scope, "image_too_large")  # refused searches are evidence of probing too
        response = web_error_page(Request(scope), 413, limit_mb=limit_mb)
        if response is None:
            response = JSONResponse(error_body("image_too_large", f"The request is larger than the limit of "
                                                                  f"{limit_mb:g} MB."), status_code=413)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class BodyTooLarge(Exception):
    pass


def _protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
