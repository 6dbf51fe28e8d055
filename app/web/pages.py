"""What every web page shares: templates, the signed-in user and its permissions, CSRF, errors.

Pages are server-rendered; the only script is static/app.js (upload progress, paste, drop, print),
so the pages' Content-Security-Policy allows scripts and styles from this server only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlencode

from fastapi import Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.http.middleware import FORGED_FORM
from app.pipeline.verdict import MIN_SURFACE
from app.security.actor import ANONYMOUS
from app.security.roles import Permission
from app.web import i18n
from app.web.i18n import N_
from app.web.session import SessionCodec, WebSession, WebUser

TEMPLATES = Path(__file__).parent / "templates"
WEB_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                        trim_blocks=True, lstrip_blocks=True)
# The evidence line says whether the aligned surfaces agree by the verdict's own rule.
templates.globals["min_surface"] = MIN_SURFACE


CSRF_REFUSED = N_("This form has expired or did not come from this site. Reload the page and try again.")


class WebError(Exception):
    """An error page (or a redirect to sign in) instead of the API's JSON errors."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message


class SignInRequired(WebError):
    def __init__(self):
        super().__init__(303, N_("Sign in with your API key."))


def codec(request: Request) -> SessionCodec:
    return request.app.state.web_sessions


def web_session(request: Request) -> WebSession:
    """The request's session; a new anonymous one (written with the response) when it has none."""
    session = getattr(request.state, "web_session", None)
    if session is None:
        session = codec(request).read(request)
        if session is None:
            session = WebSession.anonymous()
            request.state.write_session = session
        request.state.web_session = session
    return session


def current_user(request: Request) -> WebUser | None:
    """The signed-in user, with its key read again now: a revoked key signs the session out."""
    session = web_session(request)
    if not request.app.state.web_auth:
        return WebUser(session, ANONYMOUS)
    if session.key_id is None or request.app.state.web_searches.session_ended(session.sid):
        return None  # not signed in, or a copy of a cookie whose session was signed out
    principal = request.app.state.keys.principal_by_id(session.key_id)
    return WebUser(session, principal) if principal is not None else None


def allow(*permissions: Permission):
    """A dependency: the signed-in user if its role has any of ``permissions``."""

    def check(request: Request) -> WebUser:
        user = current_user(request)
        if user is None:
            raise SignInRequired()
        if not any(user.principal.can(p) for p in permissions):
            raise WebError(403, N_("Your role may not open this page."))
        return user

    # Read, as require()'s are, by the authentication middleware: a form POST to the route is checked
    # (app.web.gate) before its body is read (and by the route tests).
    check.permissions = permissions  # type: ignore[attr-defined]
    return check


def csrf_checked(*permissions: Permission):
    """``allow`` for a form POST, which must also carry the session's CSRF token."""
    allowed = allow(*permissions)

    def check(request: Request, csrf_token: str = Form(""), user: WebUser = Depends(allowed)) -> WebUser:
        token = csrf_token or request.headers.get("x-csrf-token", "")
        if not user.session.csrf_ok(token):
            setattr(request.state, FORGED_FORM, True)  # not the key holder's: no audit event as its search
            raise WebError(403, CSRF_REFUSED)
        return user

    check.permissions = permissions  # type: ignore[attr-defined]  # the same checks, read alike
    return check


def translator(request: Request) -> i18n.Translator:
    found = getattr(request.state, "translator", None)
    if found is None:
        lang, switched = i18n.choose_language(request)
        found = request.state.translator = i18n.Translator(lang)
        request.state.lang_switched = switched
    return found


def url_with(request: Request, **params) -> str:
    """This page's URL with some query parameters replaced (None drops one)."""
    query = {k: v for k, v in request.query_params.items() if k not in params}
    query.update({k: v for k, v in params.items() if v is not None})
    return request.url.path + ("?" + urlencode(query) if query else "")


def render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    t = translator(request)
    user = context.pop("user", None) or current_user(request)
    session = web_session(request)
    html = templates.get_template(template).render(
        request=request, _=t.gettext, lang=t.lang, dir=t.direction, languages=i18n.LANGUAGES,
        user=user, csrf_token=session.csrf, Permission=Permission,
        can=lambda p: user is not None and user.principal.can(p),
        lang_url=lambda code: url_with(request, lang=code), url_with=lambda **kw: url_with(request, **kw),
        **context,
    )
    return finish(request, HTMLResponse(html, status_code=status))


ResponseT = TypeVar("ResponseT", bound=Response)


def finish(request: Request, response: ResponseT) -> ResponseT:
    """Headers and cookies every web response carries."""
    if response.media_type == "text/html":
        response.headers["Content-Security-Policy"] = WEB_CSP
    # Case material (results, records, photos) stays out of shared and browser caches.
    response.headers.setdefault("Cache-Control", "no-store")
    written = getattr(request.state, "write_session", None)
    if written is not None:
        codec(request).write(response, request, written)
    if getattr(request.state, "lang_switched", False):
        response.set_cookie(i18n.COOKIE, request.state.translator.lang, max_age=365 * 86400, path="/",
                            samesite="lax", httponly=True)
    return response


def redirect(request: Request, url: str) -> Response:
    return finish(request, RedirectResponse(url, status_code=303))


def sign_in_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/signin?next=" + quote(target, safe="")


ASYNC_HEADER = "x-hm-async"  # set by app.js: answer JSON (where to go next) instead of a page


def wants_json(request: Request) -> bool:
    return request.headers.get(ASYNC_HEADER) == "1"


async def web_error_page(request: Request, exc: WebError) -> Response:
    if isinstance(exc, SignInRequired):
        if wants_json(request):  # a script would follow a redirect to the sign-in page and show it as a failure
            return finish(request, JSONResponse({"redirect": sign_in_url_for_page(request)}, status_code=401))
        return redirect(request, sign_in_url(request) if request.method == "GET" else "/signin")
    t = translator(request)
    if wants_json(request):
        return finish(request, JSONResponse({"error": t.gettext(exc.message)}, status_code=exc.status))
    return render(request, "error.html", status=exc.status, message=t.gettext(exc.message))


# Paths that answer JSON errors whoever asks: the API, its docs and health checks, static files.
NOT_PAGES = ("/v1/", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz", "/static/")
HTTP_ERRORS = {
    404: N_("Not found."),
    405: N_("This page cannot be used that way: go back and use its buttons."),
    422: N_("This address or form is not valid: go back and try again."),
}
TOO_LARGE = N_("What was sent is larger than the limit of %(mb)s MB: go back and send fewer or smaller photos at once.")


def web_http_error(request: Request, status: int, limit_mb: float | None = None) -> Response | None:
    """The translated error page for an HTTP error on a web path; None on the API's paths (JSON there)."""
    path = request.url.path
    if path == "/v1" or path.startswith(NOT_PAGES) or (status != 413 and status not in HTTP_ERRORS):
        return None
    t = translator(request)
    message = t.gettext(TOO_LARGE, mb=f"{limit_mb:g}") if status == 413 else t.gettext(HTTP_ERRORS[status])
    if wants_json(request):
        return finish(request, JSONResponse({"error": message}, status_code=status))
    return render(request, "error.html", status=status, message=message)


def sign_in_url_for_page(request: Request) -> str:
    """Sign-in, then back to the page a script's request came from (its own URL is a POST target)."""
    return "/signin?next=" + quote(request.url.path, safe="")
