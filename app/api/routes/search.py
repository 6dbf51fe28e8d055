from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.api.deps import get_service, read_upload
from app.schemas import ErrorResponse, SearchResponse
from app.service import MatchingService

router = APIRouter(prefix="/v1", tags=["search"])

ERRORS = {
    409: {"model": ErrorResponse, "description": "The index was built with another model."},
    413: {"model": ErrorResponse, "description": "File or image dimensions over the limit."},
    422: {"model": ErrorResponse, "description": "Not an image, or a damaged one."},
}


@router.post("/search", response_model=SearchResponse, responses=ERRORS)
async def search(
    image: UploadFile = File(..., description="The photo to look up (JPEG, PNG, WebP, TIFF, HEIC)."),
    top_k: int | None = Form(None, ge=1, le=100),
    top_k_query: int | None = Query(None, alias="top_k", ge=1, le=100),
    service: MatchingService = Depends(get_service),
) -> SearchResponse:
    """Registered artefacts this photo may show, best first, each with a score and a verdict."""
    data = await read_upload(image, service.settings.max_upload_bytes)
    return await run_in_threadpool(service.search, data, top_k or top_k_query)
