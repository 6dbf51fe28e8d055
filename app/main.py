"""The application: the API's router and the web pages on one FastAPI app, behind the shared
middleware and error handlers of ``app.http``, around one ``MatchingService`` started with the app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from app import __version__
from app.api.main import MULTI_PHOTO_PATHS as API_MULTI_PHOTO_PATHS
from app.api.main import api_router
from app.core.config import Settings, get_settings
from app.core.threads import apply_thread_limits, intra_op_threads
from app.embedding import create_serving_encoder
from app.http.errors import SEARCH_PATH, install_error_handlers
from app.http.middleware import AuditRefusedSearches, Authenticate, BodySizeLimit, SecurityHeaders
from app.jobs.archive import ListingArchive
from app.jobs.follow import IndexFollower
from app.jobs.retrohunt import RetroHunter
from app.jobs.webhooks import WebhookDispatcher
from app.security.audit import AuditLog
from app.security.keys import KeyStore
from app.security.ratelimit import make_limiter
from app.service import MatchingService
from app.web.main import MULTI_PHOTO_PATHS as WEB_MULTI_PHOTO_PATHS
from app.web.main import SEARCH_PATHS as WEB_SEARCH_PATHS
from app.web.main import mount_web

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, service: MatchingService | None = None) -> FastAPI:
    settings = settings or (service.settings if service is not None else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = service is None
        if owned:
            threads = intra_op_threads(settings)
            if threads:  # several workers share the cores: each gets its part, in every library
                apply_thread_limits(threads)
            app.state.service = MatchingService(settings, encoder=create_serving_encoder(settings))
        else:
            app.state.service = service
        app.state.service.start()
        app.state.keys = KeyStore(app.state.service.store.sessions)
        app.state.audit = AuditLog(app.state.service.store.sessions)
        # New alerts go to the webhook endpoints from this thread only, never from the scan or request that
        # raised them; a delivery pending at the last stop is sent now. The threads are kept in locals too: two
        # clients of one app (tests) run overlapping lifespans that share app.state, and each stops its own.
        dispatcher = app.state.webhook_dispatcher = WebhookDispatcher(app.state.service.settings,
                                                                      app.state.service.store.sessions)
        # Monitors' searches that name their listing go into the listings archive (one writer per process).
        archive = app.state.listing_archive = (ListingArchive.for_service(app.state.service) if settings.archive
                                               else None)
        # Photos registered by any process are searched in the listings archive in the background.
        hunter = app.state.retrohunter = RetroHunter(app.state.service, on_alert=dispatcher.wake)
        # Changes other replicas (or the CLI) make to the registry reach this process's index through the database.
        follower = app.state.index_follower = IndexFollower(app.state.service)
        running = app.state.service
        if not settings.auth:
            log.warning("HM_AUTH=false: every request acts as an admin without a key. "
                        "Use on a single-user machine only.")
        elif not any(k.revoked_at is None for k in app.state.keys.list()):
            log.warning("No API key exists yet, so every /v1 request is refused: create one with "
                        "`heritage-match keys create --name NAME --role officer`.")
        log.info("heritage-match ready: model %s, %d vectors", app.state.service.fingerprint,
                 app.state.service.index.count if app.state.service.index else 0)
        # The background threads start last and stop whatever happens, so none outlives its app.
        try:
            follower.start()
            dispatcher.start()
            hunter.start()
            running.photo_listeners.append(hunter.wake)
            yield
        finally:
            if hunter.wake in running.photo_listeners:
                running.photo_listeners.remove(hunter.wake)
            hunter.stop()
            dispatcher.stop()
            follower.stop()
            if archive is not None:
                archive.close()
        if owned:
            close_encoder = getattr(running.encoder, "close", None)
            if close_encoder is not None:  # the micro-batcher finishes queued requests and stops its thread
                close_encoder()
            running.close()

    # The docs pages' scripts are served from the package: posts without internet still get /docs.
    app = FastAPIOffline(
        title="heritage-match",
        version=__version__,
        description="Match photos of cultural objects against a registry of artefacts at risk of trafficking.",
        lifespan=lifespan,
    )

    install_error_handlers(app)

    # Added innermost first: headers wrap everything, CORS answers preflights before authentication,
    # the audit of refused searches sees every refusal, authentication (API keys, web sessions) refuses
    # before the size limit lets any body in, and gives it the principal whose limit applies.
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes + (1 << 20),  # room for multipart headers
                       limit_mb=settings.max_upload_mb, multi_limit=settings.max_request_bytes + (1 << 20),
                       multi_limit_mb=settings.max_request_bytes / (1 << 20),
                       multi_paths=API_MULTI_PHOTO_PATHS + WEB_MULTI_PHOTO_PATHS)
    # The limiters count in memory, or in the registry database for all replicas (HM_SHARED_RATE_LIMITS), whose
    # engine is the service's, made when the app starts.
    def registry_engine():
        return app.state.service.store.engine

    # One limiter for the API and the web pages: a key's searches count alike wherever they come from.
    app.state.limiter = make_limiter(settings, "requests", settings.rate_limit_per_minute, settings.rate_limit_burst,
                                     registry_engine)
    # Guessing keys, through the API or the sign-in page, is slowed per client address.
    app.state.auth_failures = make_limiter(settings, "auth_failures", settings.auth_failures_per_minute,
                                           settings.auth_failures_burst, registry_engine)
    app.add_middleware(Authenticate, enabled=settings.auth, limiter=app.state.limiter, failures=app.state.auth_failures)
    # Outside authentication and the size limit: their refusals of a search are audited too (those from no
    # known key at most as often per address as wrong keys are allowed).
    app.add_middleware(AuditRefusedSearches, paths=(SEARCH_PATH, *WEB_SEARCH_PATHS),
                       unauthenticated=make_limiter(settings, "unauthenticated_searches",
                                                    settings.auth_failures_per_minute, settings.auth_failures_burst,
                                                    registry_engine))
    if settings.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list, allow_credentials=False,
                           allow_methods=["GET", "POST", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(SecurityHeaders)

    app.include_router(api_router)
    mount_web(app, settings)
    return app
