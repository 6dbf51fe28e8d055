from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import AuditDep, PhotoId, PhotoViewer, ServiceDep
from app.pipeline.decode import THUMB_SIZE, decode_image, thumbnail_jpeg
from app.registry.access import readable_photo
from app.schemas import PHOTOS_PATH, ErrorResponse

router = APIRouter(prefix=PHOTOS_PATH, tags=["photos"])


@router.get(
    "/{photo_id}",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorResponse}},
)
async def get_photo(
    photo_id: PhotoId,
    principal: PhotoViewer,
    service: ServiceDep,
    audit: AuditDep,
    size: Literal["full", "thumb"] = "full",
) -> Response:
    """A registry photo: the stored original, or a JPEG thumbnail (256 px) with ``size=thumb``.

    An officer gets photos of artefacts its own searches matched; a monitor only their thumbnails.
    """
    photo = await run_in_threadpool(readable_photo, principal, photo_id, size, service.store, audit)
    # Off the event loop: with HM_PHOTO_STORE=database a read is a query.
    data = await run_in_threadpool(service.store.photos.read, photo.sha256, photo.format)
    # Registry photos are case material like every /v1 answer: no own cache header, so the middleware's
    # no-store applies (a shared customs PC would keep a cached photo after sign-out).
    if size == "thumb":
        thumb = await run_in_threadpool(
            lambda: thumbnail_jpeg(decode_image(data, min_side=THUMB_SIZE).image, THUMB_SIZE))
        return Response(thumb, media_type="image/jpeg")
    return Response(data, media_type=service.store.photos.media_type(photo.format))

