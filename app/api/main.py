"""The API's routers, all under /v1 but the health checks; ``app.main`` includes this one router."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import PROTECTED_RESPONSES
from app.api.routes import alerts, artefacts, health, index, keys, photos, search, webhooks

# Requests that may carry several photos: the size limit lets these through up to HM_MAX_REQUEST_MB.
MULTI_PHOTO_PATHS = (r"/v1/artefacts/\d+/photos",)

api_router = APIRouter()
api_router.include_router(health.router)
for module in (search, artefacts, photos, keys, index, alerts, webhooks):
    api_router.include_router(module.router, responses=PROTECTED_RESPONSES)
