"""ASGI middleware: security headers, authentication with rate limits, request size limit, the audit
of refused searches.

Authentication and the size limit are ASGI middleware rather than route dependencies because
FastAPI parses a request's body before it runs dependencies: a request without a valid key or web
session, over its rate, or from a role the route does not allow, is refused before a byte of its
body is read.
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.audited_search import record_refused_search
from app.http.errors import HTTP_CODES, error_body, web_error_page
from app.http.requests import BAD_KEY_MESSAGE, NO_KEY_MESSAGE
from app.security.actor import ANONYMOUS, Principal, reset_principal, set_principal
from app.security.audit import watching_searches
from app.security.ratelimit import Limiter, RateLimiter
from app.security.roles import Permission

log = logging.getLogger(__name__)

PROTECTED_PREFIX = "/v1"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # requests that may carry an upload
# A request from no key or signed-in session reads at most this much: the sign-in form is all it may send.
UNAUTHENTICATED_BODY_LIMIT = 64 * 1024
# app.state attribute set by the web interface: async (request, permission checks) -> the signed-in user's
# principal, or the page that refuses the request (sign in, role, rate), from the cookie alone.
SIGNED_IN_FORM = "web_signed_in_form"
# request.state attribute: the error code a route refused a search with, where its answer (a web page)
# carries none.
SEARCH_REFUSAL = "search_refusal"
# request.state attribute, true for a form refused for lacking its session's CSRF token: another site sent
# it, not the key's holder, so it is not recorded as the key's (refused) search.
FORGED_FORM = "forged_form"

PermissionChecks = tuple[tuple[Permission, ...], ...]  # each: any of these permissions
SignedInForm = Callable[[Request, PermissionChecks], Awaitable[Principal | Response]]

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
    """The peer's address. With ``HM_FORWARDED_ALLOW_IPS`` naming the proxy a request came through,
    uvicorn (as ``heritage-match serve`` starts it) puts the client's from ``X-Forwarded-For`` here;
    else it is the connection's own."""
    client = scope.get("client")
    return client[0] if client else "unknown"


RouteTable = list[tuple["re.Pattern[str]", "frozenset[str] | None", PermissionChecks]]
_TABLES: "weakref.WeakKeyDictionary[object, RouteTable]" = weakref.WeakKeyDictionary()


def route_permissions(scope: Scope) -> PermissionChecks:
    """The permission checks of the route that will answer this request (the first whose path and method
    match, as the router picks it), read from its dependencies: ``require`` and the web's ``allow`` mark
    theirs with ``permissions``. () when it needs none, or no route answers."""
    app = scope.get("app")
    if app is None:
        return ()
    table = _TABLES.get(app)
    if table is None:
        table = _TABLES[app] = _route_table(app)
    path = scope["path"]
    for regex, methods, checks in table:
        if regex.match(path):
            if methods is None or scope["method"] in methods:
                return checks
    return ()


def _route_table(app: object) -> RouteTable:
    routes: list = list(getattr(app, "routes", ()))
    try:  # FastAPI 0.16x includes routers lazily: their routes, with the include's dependencies, come from here
        from fastapi.routing import iter_route_contexts
        routes = list(iter_route_contexts(routes))
    except ImportError:  # older FastAPI: included routes are flat in app.routes
        pass
    table: RouteTable = []
    for route in routes:
        regex = getattr(route, "path_regex", None)
        if regex is None:
            continue
        methods = getattr(route, "methods", None)
        found: list[tuple[Permission, ...]] = []
        pending = [getattr(route, "dependant", None)]
        while pending:
            dependant = pending.pop()
            if dependant is None:
                continue
            permissions = getattr(dependant.call, "permissions", None)
            if permissions and tuple(permissions) not in found:
                found.append(tuple(permissions))
            pending.extend(dependant.dependencies)
        table.append((regex, frozenset(methods) if methods else None, tuple(found)))
    return table


class Authenticate:
    """Who sends a request, settled from its headers before a byte of its body is read.

    Every request under /v1 needs a valid API key (``Authorization: Bearer``) within its rate. A request
    that may carry a body (POST, PUT, PATCH, DELETE) to any other route that needs a permission (the web's
    forms, uploads included) needs a signed-in web session: the web interface checks its cookie
    (``SIGNED_IN_FORM``). Either way, a role that the route does not allow is refused here too, not after
    its upload was read. A refusal answers ``Connection: close``, so the server reads nothing more of the
    request.

    The principal goes to ``request.state.principal`` (for the routes' permission checks, the size limit
    and the audit of refused searches) and to the audit trail's context for the registry changes the
    request makes.
    """

    def __init__(self, app: ASGIApp, enabled: bool, limiter: Limiter, failures: Limiter | None = None):
        self.app = app
        self.enabled = enabled
        self.limiter = limiter
        self.failures: Limiter = failures or RateLimiter(0, 1)  # unknown keys per client address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        checks = route_permissions(scope) if scope["method"] in BODY_METHODS else ()
        if _protected(scope["path"]):
            found = await self._api_key(scope, checks)
        elif checks:
            form: SignedInForm | None = getattr(scope["app"].state, SIGNED_IN_FORM, None)
            if form is None:  # no web interface on this app: the route's own checks apply
                return await self.app(scope, receive, send)
            found = await form(Request(scope), checks)  # a Request without receive: it cannot read the body
        else:
            return await self.app(scope, receive, send)
        if isinstance(found, Response):
            found.headers["Connection"] = "close"  # the body stays unread: the connection cannot be reused
            return await found(scope, receive, send)
        scope.setdefault("state", {})["principal"] = found
        token = set_principal(found)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_principal(token)

    async def _api_key(self, scope: Scope, checks: PermissionChecks) -> Principal | Response:
        client = client_address(scope)
        has_key = "authorization" in Headers(scope=scope)
        wait = self.failures.pending(client) if has_key else 0.0
        if wait > 0:  # this address sent too many unknown keys: it waits before trying another
            retry = RateLimiter.retry_after_header(wait)
            return JSONResponse(error_body("rate_limited", f"Too many unknown API keys from this address; "
                                           f"retry in {retry} s."), status_code=429, headers={"Retry-After": retry})
        principal = self._principal(scope)
        if principal is None:
            if has_key:
                self.failures.check(client)
            return JSONResponse(error_body("unauthorized", BAD_KEY_MESSAGE if has_key else NO_KEY_MESSAGE),
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        scope.setdefault("state", {})["principal"] = principal  # a refusal from here on is audited under it
        wait = self.limiter.check(principal.key_id if principal.key_id is not None else principal.name)
        if wait > 0:
            retry = RateLimiter.retry_after_header(wait)
            return JSONResponse(error_body("rate_limited", f"Too many requests for this key; retry in {retry} s."),
                                status_code=429, headers={"Retry-After": retry})
        if not all(any(principal.can(p) for p in check) for check in checks):
            return JSONResponse(error_body("forbidden", f"The {principal.role.value} role may not do this."),
                                status_code=403)
        return principal

    def _principal(self, scope: Scope) -> Principal | None:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return scope["app"].state.keys.authenticate(token.strip())


class BodySizeLimit:
    """Refuse a request body over its limit as it streams in, Content-Length or not.

    The multipart parser would otherwise spool a whole chunked upload to disk before any route
    could look at its size. Over the limit, reading stops and the answer is 413 whatever the inner
    app made of the cut-off body. The limit is ``limit`` for a request with a principal (a key or a
    signed-in session, set by ``Authenticate``); ``multi_limit`` for one to ``multi_paths`` (regular
    expressions of paths that may carry several photos, each still checked on its own) whose principal
    may write the registry; ``UNAUTHENTICATED_BODY_LIMIT`` for one with no principal (the sign-in form).
    """

    def __init__(self, app: ASGIApp, limit: int, limit_mb: float, multi_limit: int | None = None,
                 multi_limit_mb: float | None = None, multi_paths: Iterable[str] = (),
                 unauthenticated_limit: int = UNAUTHENTICATED_BODY_LIMIT):
        self.app = app
        self.limit = (limit, limit_mb)
        self.multi_limit = (multi_limit or limit, multi_limit_mb or limit_mb)
        self.unauthenticated_limit = (unauthenticated_limit, unauthenticated_limit / (1 << 20))
        self.multi_paths = re.compile("^(" + "|".join(multi_paths) + ")/?$") if multi_paths else None

    def limits(self, scope: Scope) -> tuple[int, float]:
        """The request's limit in bytes, and in MB as its 413 answer says it."""
        principal: Principal | None = scope.get("state", {}).get("principal")
        if principal is None:
            return self.unauthenticated_limit
        if self.multi_paths and self.multi_paths.match(scope["path"]) and principal.can(Permission.write_registry):
            return self.multi_limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, limit_mb = self.limits(scope)
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
        response = web_error_page(Request(scope), 413, limit_mb=limit_mb)
        if response is None:
            response = JSONResponse(error_body("image_too_large", f"The request is larger than the limit of "
                                                                  f"{limit_mb:g} MB."), status_code=413)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class BodyTooLarge(Exception):
    pass


# The error code of a refused search whose answer carries none (a web page), by its status.
REFUSAL_CODES = {**HTTP_CODES, 401: "unauthorized", 403: "forbidden", 413: "image_too_large",
                 422: "validation_error", 429: "rate_limited", 503: "not_ready"}


def refusal_code(status: int) -> str:
    if 300 <= status < 400:
        return "unauthorized"  # a web form's answer to a request without a session: sign in first
    return REFUSAL_CODES.get(status, "internal_error" if status >= 500 else "http_error")


class AuditRefusedSearches:
    """Every search request leaves an audit event: the search's own (``audited_search``), or, when it
    ends without one, a refused search with its error code, whoever refused it: authentication (no key
    or session, an unknown key, the rate, the wrong-key limit, the role), the size limit, the body
    parser (a malformed multipart body, too many fields), the parameters, the route (no photo).

    The code is the one a route left in ``request.state`` (``SEARCH_REFUSAL``), else the API envelope's
    ``error.code``, else the status's. The event names the request's principal; one refused before any was
    known is recorded under ``UNAUTHENTICATED`` with the client's address, at most as often as
    ``unauthenticated`` allows per address, so that requests without a key cannot fill the disk.
    """

    def __init__(self, app: ASGIApp, paths: Iterable[str], unauthenticated: Limiter | None = None):
        self.app = app
        self.paths = frozenset(paths)
        self.unauthenticated: Limiter = unauthenticated or RateLimiter(0, 1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        status = 0
        envelope = bytearray()  # an error answer's JSON, read for its code (the envelope is small)
        is_json = False

        with watching_searches() as recorded:
            async def watched_send(message: Message) -> None:
                nonlocal status, is_json
                if message["type"] == "http.response.start":
                    status = message["status"]
                    is_json = Headers(raw=message.get("headers", [])).get("content-type", "").startswith(
                        "application/json")
                elif message["type"] == "http.response.body" and status >= 300 and not recorded:
                    if is_json and len(envelope) < 65536:
                        envelope.extend(message.get("body", b""))
                    if not message.get("more_body", False):  # recorded before the client has the answer
                        await self._record(scope, status, bytes(envelope))
                await send(message)

            try:
                await self.app(scope, receive, watched_send)
            except Exception:
                if not recorded:
                    await self._record(scope, 500, b"")
                raise

    async def _record(self, scope: Scope, status: int, envelope: bytes) -> None:
        state = scope.get("state", {})
        if state.get(FORGED_FORM):
            return
        code = state.get(SEARCH_REFUSAL) or _envelope_code(envelope) or refusal_code(status)
        principal: Principal | None = state.get("principal")
        if principal is not None:
            await record_refused_search(scope, code, principal)
        elif self.unauthenticated.check(client := client_address(scope)) == 0:
            await record_refused_search(scope, code, None, details={"client": client})


def _envelope_code(body: bytes) -> str | None:
    try:
        error = json.loads(body).get("error") if body else None
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and code else None


def _protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
