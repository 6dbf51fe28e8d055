from __future__ import annotations

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.api.deps import AuditDep, Searcher, ServiceDep
from app.http.audited_search import audited_search
from app.http.requests import read_upload
from app.schemas import ErrorResponse, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])

ERRORS: dict[int | str, dict] = {
    409: {"model": ErrorResponse, "description": "The index was built with another model."},
    413: {"model": ErrorResponse, "description": "File or image dimensions over the limit."},
    422: {"model": ErrorResponse, "description": "Not an image, or a damaged one."},
    503: {"model": ErrorResponse, "description": "The index or the model is not ready yet."},
}


@router.post("/search", response_model=SearchResponse, responses=ERRORS)
async def search(
    principal: Searcher,
    service: ServiceDep,
    audit: AuditDep,
    image: UploadFile = File(..., description="The photo to look up (JPEG, PNG, WebP, TIFF, HEIC)."),
    top_k: int | None = Form(None, ge=1, le=100),
    top_k_query: int | None = Query(None, alias="top_k", ge=1, le=100),
) -> SearchResponse:
    """Registered artefacts this photo may show, best first, each with a score and a verdict.

    Every search is recorded in the audit trail; the response carries the event's ``audit_id``.
    A monitor key sees only `match` results, with thumbnail links.
    """
    # A refused upload is audited with its code by the middleware, as every refused search is.
    data = await read_upload(image, service.settings.max_upload_bytes)
    return await run_in_threadpool(audited_search, service, audit, principal, data, top_k or top_k_query)
