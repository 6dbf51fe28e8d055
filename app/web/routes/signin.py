"""Sign in with an API key, sign out, and the front door."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool

from app.http.middleware import client_address
from app.web.deps import SessionDep
from app.web.i18n import N_
from app.web.pages import CSRF_REFUSED, WebError, codec, current_user, redirect, render
from app.web.session import WebSession

router = APIRouter(include_in_schema=False)
PUBLIC_PAGES = {"/", "/signin"}  # reachable without signing in (the route tests read this)


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never another host (open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/search"


@router.get("/")
def home(request: Request):
    return redirect(request, "/search" if current_user(request) else "/signin")


@router.get("/signin")
def signin_form(request: Request, next: str | None = None):
    return render(request, "signin.html", next=_safe_next(next), user=None)


@router.post("/signin")
async def signin(request: Request, session: SessionDep, key: str = Form(""), csrf_token: str = Form(""),
                 next: str = Form("/search")):
    if not session.csrf_ok(csrf_token):  # a sign-in form of this session only: no login CSRF
        raise WebError(403, CSRF_REFUSED)
    failures = request.app.state.auth_failures
    client = client_address(request.scope)
    # The attempt is counted before the key is looked up (and given back if the key is right): counted
    # after, guesses sent at the same moment all passed the check.
    wait = failures.check(client)
    if wait > 0:  # too many wrong keys from this address: no more guesses for a while
        response = render(request, "signin.html", status=429, next=_safe_next(next), user=None,
                          error=N_("Too many wrong keys from this address. Wait a minute, then try again."))
        response.headers["Retry-After"] = failures.retry_after_header(wait)
        return response
    principal = await run_in_threadpool(request.app.state.keys.authenticate, key.strip())
    if principal is not None:
        failures.refund(client)
    else:
        return render(request, "signin.html", status=401, next=_safe_next(next), user=None,
                      error=N_("This API key is unknown or revoked."))
    signed_in = WebSession.signed_in(principal.key_id)
    request.state.write_session = signed_in
    request.state.web_session = signed_in
    await run_in_threadpool(request.app.state.audit.record, "web.signin", principal=principal)
    return redirect(request, _safe_next(next))


@router.post("/signout")
def signout(request: Request, session: SessionDep, csrf_token: str = Form("")):
    if not session.csrf_ok(csrf_token):
        raise WebError(403, CSRF_REFUSED)
    if session.key_id is not None:  # the old cookie stops working everywhere, not just in this browser
        request.app.state.web_searches.end_session(session.sid, codec(request).max_age)
    request.state.write_session = WebSession.anonymous()
    return redirect(request, "/signin")
