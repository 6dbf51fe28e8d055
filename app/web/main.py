"""The web interface on the app: its routers, static files, error pages and kept searches."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.core.config import Settings
from app.http.errors import WEB_ERROR_PAGES
from app.http.middleware import SIGNED_IN_FORM
from app.web.gate import signed_in_form
from app.web.pages import WebError, web_error_page, web_http_error
from app.web.routes import alerts, photos, registry, search, signin
from app.web.searches import SearchKeeper
from app.web.session import SessionCodec

STATIC = Path(__file__).parent / "static"
ROUTERS = (signin.router, search.router, registry.router, photos.router, alerts.router)
# Forms that may carry several photos: the size limit lets these through up to HM_MAX_REQUEST_MB (for a role
# that may write the registry).
MULTI_PHOTO_PATHS = (r"/registry/new", r"/registry/\d+/photos")
SEARCH_PATHS = ("/search",)  # POSTed, they search: every refused one is audited, as the API's are


def mount_web(app: FastAPI, settings: Settings) -> None:
    """Add the web pages to the app (server-rendered, outside /v1, never in the OpenAPI schema)."""
    app.state.web_auth = settings.auth  # the app's settings: a shared service may carry other ones
    # The cookies' secret, the kept searches and the signed-out sessions are in the registry database, so that
    # any replica serves any signed-in officer. Its engine is looked up when used: the service that holds it is
    # made when the app starts.
    app.state.web_sessions = SessionCodec(settings, lambda: app.state.service.store.engine)
    app.state.web_searches = SearchKeeper(lambda: app.state.service.store.engine, settings.web_searches_kept)
    app.add_exception_handler(WebError, web_error_page)  # type: ignore[arg-type]
    setattr(app.state, WEB_ERROR_PAGES, web_http_error)  # the shared handlers answer web paths with these pages
    setattr(app.state, SIGNED_IN_FORM, signed_in_form)  # the shared authentication checks forms before their body
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for router in ROUTERS:
        app.include_router(router)
