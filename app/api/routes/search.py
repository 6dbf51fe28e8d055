from __future__ import annotations

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.api.deps import ArchiveDep, AuditDep, Searcher, ServiceDep
from app.http.audited_search import audited_search
from app.http.requests import read_upload
from app.registry.archive import ListingFacts
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
    archive: ArchiveDep,
    image: UploadFile = File(..., description="The photo to look up (JPEG, PNG, WebP, TIFF, HEIC)."),
    top_k: int | None = Form(None, ge=1, le=100),
    top_k_query: int | None = Query(None, alias="top_k", ge=1, le=100),
    listing_id: str | None = Form(None, max_length=300, description="Monitors: the listing this photo is from. "
                                  "Naming the listing (or its url) keeps the photo in the listings archive."),
    listing_url: str | None = Form(None, max_length=4000, description="Monitors: the listing's URL."),
    platform: str | None = Form(None, max_length=100, description="Monitors: the marketplace."),
    listing_title: str | None = Form(None, max_length=2000, description="Monitors: the listing's title."),
) -> SearchResponse:
    """Registered artefacts this photo may show, best first, each with a score and a verdict.

    Every search is recorded in the audit trail; the response carries the event's ``audit_id``.
    A monitor key sees only `match` results, with thumbnail links. A monitor's search that names its
    listing (`listing_id` or `listing_url`) is also kept in the listings archive, so that an object
    reported later is found in it (retro-hunt); a `match` then raises an alert.
    """
    # A refused upload is audited with its code by the middleware, as every refused search is.
    data = await read_upload(image, service.settings.max_upload_bytes)
    listing = (ListingFacts(listing_id=listing_id or listing_url or "", url=listing_url, platform=platform or "",
                            title=listing_title, source="api") if listing_id or listing_url else None)
    return await run_in_threadpool(audited_search, service, audit, principal, data, top_k or top_k_query, listing,
                                   archive)
