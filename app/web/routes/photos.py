"""Registry photos for a signed-in session, with the same access rules as GET /v1/photos."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.core.errors import Forbidden, NotFound
from app.pipeline.decode import THUMB_SIZE, decode_image, thumbnail_jpeg
from app.registry.access import readable_photo
from app.web.deps import PhotoId, PhotoViewer
from app.web.i18n import N_
from app.web.pages import WebError, finish

router = APIRouter(include_in_schema=False)
LARGE_SIZE = 1024


@router.get("/photos/{photo_id}")
async def photo(request: Request, photo_id: PhotoId, user: PhotoViewer,
                size: Literal["full", "large", "thumb"] = "full"):
    service, audit = request.app.state.service, request.app.state.audit
    try:
        # "large" is a full-size view for access: a monitor's thumbnails-only rule holds for it too.
        found = await run_in_threadpool(readable_photo, user.principal, photo_id,
                                        "thumb" if size == "thumb" else "full", service.store, audit)
    except Forbidden:
        raise WebError(403, N_("Your role may not see this photo.")) from None
    except NotFound:
        raise WebError(404, N_("Not found.")) from None
    data = await run_in_threadpool(service.store.photos.read, found.sha256, found.format)
    if size != "full":  # a JPEG any browser shows, whatever the stored format (TIFF, HEIC)
        side = THUMB_SIZE if size == "thumb" else LARGE_SIZE
        data = await run_in_threadpool(lambda: thumbnail_jpeg(decode_image(data, min_side=side).image, side))
        media = "image/jpeg"
    else:
        media = service.store.photos.media_type(found.format)
    return finish(request, Response(data, media_type=media))  # no-store, as every page (pages.finish)
