"""The API's error envelope ``{"error": {"code", "message"}}`` and the handlers that answer with it.

Web paths answer HTTP errors with translated pages instead: the web interface registers its page
renderer in the app's state (``WEB_ERROR_PAGES``), so this layer need not know the web's paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import AppError

SEARCH_PATH = "/v1/search"  # refused searches are audited whoever refuses them (middleware.AuditRefusedSearches)
WEB_ERROR_PAGES = "web_http_error"  # app.state attribute: (request, status, **values) -> Response | None
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large"}

WebErrorPages = Callable[..., Response | None]


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def web_error_page(request: Request, status: int, **values: object) -> Response | None:
    """The web interface's translated page for an HTTP error on one of its paths; None on the API's
    paths, which answer JSON."""
    render: WebErrorPages | None = (getattr(request.app.state, WEB_ERROR_PAGES, None)
                                    if "app" in request.scope else None)
    return render(request, status, **values) if render is not None else None


def install_error_handlers(app: FastAPI) -> None:
    """Every error in the envelope: the service's own, invalid requests, and HTTP errors."""
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> Response:
        return error_response(exc.status_code, exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        page = web_error_page(request, 422)
        if page is not None:
            return page
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(422, "validation_error", "; ".join(parts) or "Invalid request.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        page = web_error_page(request, exc.status_code)
        if page is not None:
            return page
        return error_response(exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail),
                              headers=getattr(exc, "headers", None))
