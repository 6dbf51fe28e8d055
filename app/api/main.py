"""The FastAPI application: routers, error format, start-up."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from app.api.routes import artefacts, health, photos, search
from app.core.config import Settings, get_settings
from app.errors import AppError
from app.service import MatchingService

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def create_app(settings: Settings | None = None, service: MatchingService | None = None) -> FastAPI:
    settings = service.settings if service is not None else (settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = service is None
        app.state.service = service or MatchingService(settings)
        app.state.service.start()
        log.info("heritage-match ready: model %s, %d vectors", app.state.service.fingerprint,
                 app.state.service.index.count if app.state.service.index else 0)
        yield
        if owned:
            app.state.service.close()

    # The docs pages' scripts are served from the package: posts without internet still get /docs.
    app = FastAPIOffline(
        title="heritage-match",
        version=__version__,
        description="Match photos of cultural objects against a registry of artefacts at risk of trafficking.",
        lifespan=lifespan,
    )

    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError):
        return error_response(exc.status_code, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(422, "validation_error", "; ".join(parts) or "Invalid request.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        # Refuse oversized uploads before the multipart parser spools them.
        length = request.headers.get("content-length")
        limit = settings.max_upload_bytes + (1 << 20)  # room for multipart headers
        if length and length.isdigit() and int(length) > limit:
            return error_response(413, "image_too_large",
                                  f"The request is larger than the limit of {settings.max_upload_mb:.0f} MB.")
        return await call_next(request)

    app.include_router(health.router)
    app.include_router(search.router)
    app.include_router(artefacts.router)
    app.include_router(photos.router)
    return app
