"""Photo search from a phone or a desk: the form, the results, the printable case report."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from app.core.errors import AppError
from app.http.audited_search import audited_search
from app.http.middleware import SEARCH_REFUSAL
from app.http.requests import read_upload
from app.pipeline.calibrate import Calibration
from app.pipeline.decode import decode_image, thumbnail_jpeg
from app.registry.access import may_read_artefact, may_see_photo
from app.registry.models import Artefact
from app.schemas import SearchResult
from app.security.roles import Permission
from app.web.deps import Searcher, SearchForm
from app.web.i18n import N_
from app.web.pages import WebError, finish, redirect, render, translator, wants_json
from app.web.record_form import record_rows
from app.web.searches import KeptSearch
from app.web.session import WebUser

router = APIRouter(include_in_schema=False)
DISPLAY_SIZE = 1280  # the query photo as the pages show it
# What the officer reads when a search is refused, by the error's code; the API's message otherwise.
ERROR_MESSAGES = {
    "bad_image": N_("This file is not a photo that can be read. Send a JPEG, PNG, WebP, TIFF, HEIC, BMP or GIF."),
    "image_too_large": N_("The photo is too large."),
    "not_ready": N_("The service is starting; try again in a minute."),
    "index_model_mismatch": N_("The registry index was built with another model; an administrator must rebuild it."),
    "rate_limited": N_("Too many searches for this key; wait a minute and try again."),
    "no_photo": N_("Choose or take a photo first."),
}


@dataclass
class ResultView:
    """One candidate as the pages show it."""

    result: SearchResult
    rank: int
    photo_size: str  # "large" or, for a role that sees thumbnails only, "thumb"
    photo_visible: bool  # whether the role may see the registry photo at all
    artefact: Artefact | None  # the record, when the role may read it
    rows: list  # (label, value) of the record
    other_photo_ids: list[int]
    region_box: tuple[int, int, int, int] | None  # shown when the match is a part of the photo


@router.get("/search")
def search_form(request: Request, user: Searcher):
    return render(request, "search.html", user=user)


@router.post("/search")
async def search(request: Request, user: SearchForm, image: list[UploadFile] | None = File(None)):
    service, audit = request.app.state.service, request.app.state.audit
    as_json = wants_json(request)
    # The form has a camera input and a file input; the one the officer used has the photo.
    upload = next((f for f in image or [] if f is not None and f.filename), None)
    # The key's rate was applied before the form was read (app.web.gate).
    try:
        if upload is None:
            raise AppError("Choose or take a photo first.", code="no_photo", status_code=422)
        data = await read_upload(upload, service.settings.max_upload_bytes)
        response = await run_in_threadpool(audited_search, service, audit, user.principal, data)
        display = await run_in_threadpool(_display_jpeg, data, service.settings.max_image_pixels)
    except AppError as exc:
        # Audited with this code (by the middleware, as every refused search is) unless the search was.
        setattr(request.state, SEARCH_REFUSAL, exc.code)
        t = translator(request)
        message = t.gettext(ERROR_MESSAGES.get(exc.code, exc.message))
        if as_json:
            return finish(request, JSONResponse({"error": message}, status_code=exc.status_code))
        return render(request, "search.html", status=exc.status_code, user=user, error=message)
    kept = request.app.state.web_searches.keep(
        sid=user.session.sid, key_id=user.principal.key_id, key_name=user.principal.name,
        role=user.principal.role.value, response=response, display_jpeg=display, filename=upload.filename or "")
    url = f"/results/{kept.id}"
    if as_json:
        return finish(request, JSONResponse({"redirect": url}))
    return redirect(request, url)


def _display_jpeg(data: bytes, max_pixels: int) -> bytes:
    return thumbnail_jpeg(decode_image(data, max_pixels=max_pixels, min_side=DISPLAY_SIZE // 2).image,
                          DISPLAY_SIZE, quality=88)


def _kept(request: Request, user: WebUser, search_id: str) -> KeptSearch:
    kept = request.app.state.web_searches.get(search_id, user.session.sid, user.principal.key_id)
    if kept is None:
        raise WebError(404, N_("This search is not available: searches are kept for the session that ran "
                               "them, for a limited time. Search again."))
    return kept


def _views(request: Request, user: WebUser, kept: KeptSearch) -> list[ResultView]:
    service, audit = request.app.state.service, request.app.state.audit
    principal = user.principal
    full = principal.can(Permission.read_any_photo) or principal.can(Permission.read_matched_photo)
    query = kept.response.query
    views = []
    for rank, r in enumerate(kept.response.results, 1):
        artefact = None
        photo_visible = may_see_photo(principal, r.photo_id, service.store, audit)
        if may_read_artefact(principal, r.artefact_id, service.store, audit):
            artefact = service.store.get_artefact(r.artefact_id)
        box = None
        if r.region is not None:
            area = (r.region.x1 - r.region.x0) * (r.region.y1 - r.region.y0)
            if area < 0.6 * query.width * query.height:  # a frame round most of the photo says nothing
                box = (r.region.x0, r.region.y0, r.region.x1 - r.region.x0, r.region.y1 - r.region.y0)
        views.append(ResultView(
            result=r, rank=rank, photo_size="large" if full else "thumb", photo_visible=photo_visible,
            artefact=artefact,
            rows=record_rows(artefact, translator(request)) if artefact is not None else [],
            other_photo_ids=[p.id for p in artefact.photos if p.id != r.photo_id] if artefact and full else [],
            region_box=box,
        ))
    return views


@router.get("/results/{search_id}")
def results(request: Request, search_id: str, user: Searcher):
    kept = _kept(request, user, search_id)
    return render(request, "results.html", user=user, kept=kept, views=_views(request, user, kept))


@dataclass
class CalibrationView:
    """The calibration a kept search was scored with, as the case report shows it."""

    origin: str  # "data-dir", "shipped", "none"; "" for a search kept before responses said it
    fitted: str | None
    # Per pack: false-match rate and its 95% upper bound on objects the fit never saw; empty when the
    # calibration in force now is not the one the search used.
    held_out: dict[str, dict[str, float | None]]


def _calibration_view(calibration: Calibration, said: str) -> CalibrationView:
    origin, _, rest = said.partition(",")
    fitted = rest.strip().removeprefix("fitted ").strip() or None
    held_out = calibration.held_out() if said and calibration.describe() == said else {}
    held_out = {pack: f for pack, f in held_out.items() if f.get("false_match_rate") is not None}  # no open set
    if len(held_out) == 2:
        held_out.pop("all", None)  # one pack: its figures and "all" are the same
    return CalibrationView(origin=origin.split(":")[0].strip(), fitted=fitted, held_out=held_out)


@router.get("/results/{search_id}/report")
def case_report(request: Request, search_id: str, user: Searcher):
    kept = _kept(request, user, search_id)
    calibration = _calibration_view(request.app.state.service.calibration, kept.response.model.calibration)
    return render(request, "report.html", user=user, kept=kept, views=_views(request, user, kept),
                  calibration=calibration)


@router.get("/results/{search_id}/query.jpg")
def query_photo(request: Request, search_id: str, user: Searcher):
    kept = _kept(request, user, search_id)
    return finish(request, Response(kept.display_jpeg, media_type="image/jpeg"))
