from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import get_service
from app.imaging import decode_image, thumbnail_jpeg
from app.schemas import ErrorResponse
from app.service import MatchingService

router = APIRouter(prefix="/v1/photos", tags=["photos"])
THUMB_SIZE = 256


@router.get(
    "/{photo_id}",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorResponse}},
)
async def get_photo(
    photo_id: int,
    size: Literal["full", "thumb"] = "full",
    service: MatchingService = Depends(get_service),
) -> Response:
    """A registry photo: the stored original, or a JPEG thumbnail (256 px) with ``size=thumb``."""
    photo = service.store.get_photo(photo_id)
    data = service.store.photos.read(photo.sha256, photo.format)
    headers = {"Cache-Control": "private, max-age=3600", "ETag": f'"{photo.sha256}-{size}"'}
    if size == "thumb":
        thumb = await run_in_threadpool(lambda: thumbnail_jpeg(decode_image(data, min_side=THUMB_SIZE).image, THUMB_SIZE))
        return Response(thumb, media_type="image/jpeg", headers=headers)
    return Response(data, media_type=service.store.photos.media_type(photo.format), headers=headers)
