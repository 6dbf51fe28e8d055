"""The web's forms checked before their body is read: the signed-in session, the role, the key's rate.

FastAPI reads a form (and its photos) before a route's dependencies run, so the shared middleware
(``app.http.middleware.Authenticate``) asks this function first, for every POST to a route that
needs a permission. It looks at the cookie only; its refusal is the page the route would have
answered (sign in, 403), or the search form with the rate's message.
"""

from __future__ import annotations

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from app.http.middleware import PermissionChecks
from app.security.actor import Principal
from app.security.ratelimit import RateLimiter
from app.security.roles import Permission
from app.web.pages import WebError, allow, finish, render, translator, wants_json, web_error_page
from app.web.routes.search import ERROR_MESSAGES
from app.web.session import WebUser


async def signed_in_form(request: Request, checks: PermissionChecks) -> Principal | Response:
    """The principal of the signed-in session posting this form, or the answer that refuses it."""
    user: WebUser | None = None
    try:
        for permissions in checks:
            user = await run_in_threadpool(allow(*permissions), request)
    except WebError as exc:
        return await web_error_page(request, exc)
    assert user is not None  # the middleware asks only for routes with checks
    request.state.principal = user.principal  # a refusal from here on (the rate) is audited under it
    if any(Permission.search in permissions for permissions in checks):
        # A search counts against the key's rate, as an API search does, before its photo is read.
        limiter: RateLimiter = request.app.state.limiter
        wait = limiter.check(user.principal.key_id if user.principal.key_id is not None else user.principal.name)
        if wait > 0:
            message = translator(request).gettext(ERROR_MESSAGES["rate_limited"])
            response: Response = (finish(request, JSONResponse({"error": message}, status_code=429))
                                  if wants_json(request) else
                                  render(request, "search.html", status=429, user=user, error=message))
            response.headers["Retry-After"] = RateLimiter.retry_after_header(wait)
            return response
    return user.principal
