"""Registrar pages: browse and filter the registry, create and edit an artefact, add photos."""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from app.core.errors import AppError, NotFound
from app.http.requests import MAX_PHOTOS_PER_REQUEST, read_upload
from app.registry.store import ArtefactFilter
from app.security.actor import acting_as
from app.service import PhotoInput
from app.web.deps import ArtefactId, ArtefactReader, RegistryForm, RegistryLister, RegistryWriter
from app.web.i18n import N_
from app.web.pages import WebError, redirect, render, translator
from app.web.record_form import FIELDS, STATUS_LABELS, fields_from_form, form_values
from app.web.routes.search import ERROR_MESSAGES
from app.web.session import WebUser

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 24


def _filters(request: Request) -> dict[str, str]:
    q = request.query_params
    return {name: q.get(name, "").strip()[:200] for name in ("q", "status", "institution", "type")}


@router.get("/registry")
def registry(request: Request, user: RegistryLister, page: int = 1):
    service = request.app.state.service
    f = _filters(request)
    page = max(1, min(page, 10**6))
    flt = ArtefactFilter(status=f["status"] if f["status"] in STATUS_LABELS else None,
                         institution=f["institution"] or None, object_type=f["type"] or None, text=f["q"] or None)
    rows, total = service.list_artefacts(flt, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    indexed = service.indexed_photo_ids([p.id for a in rows for p in a.photos])
    return render(request, "registry.html", user=user, rows=rows, total=total, page=page, filters=f,
                  pages=max(1, -(-total // PAGE_SIZE)), indexed=indexed, statuses=STATUS_LABELS)


def _edit_page(request: Request, user: WebUser, artefact, values: dict, status: int = 200, **extra):
    service = request.app.state.service
    indexed = service.indexed_photo_ids([p.id for p in artefact.photos]) if artefact is not None else set()
    return render(request, "artefact.html", status=status, user=user, artefact=artefact, values=values,
                  fields=FIELDS, statuses=STATUS_LABELS, indexed=indexed, **extra)


# What a field's error says, by pydantic's error type, in the page's language (others stay in English).
FIELD_ERRORS = {
    "greater_than_equal": N_("must be 0 or more"),
    "finite_number": N_("must be a finite number"),
    "float_parsing": N_("must be a number"),
    "float_type": N_("must be a number"),
    "date_parsing": N_("must be a date (YYYY-MM-DD)"),
    "date_type": N_("must be a date (YYYY-MM-DD)"),
    "date_from_datetime_parsing": N_("must be a date (YYYY-MM-DD)"),
    "date_from_datetime_inexact": N_("must be a date (YYYY-MM-DD)"),
    "string_too_long": N_("is too long"),
    "string_too_short": N_("is required"),
    "missing": N_("is required"),
    "enum": N_("is not one of the choices"),
}
REMOVED = N_("cannot be removed")  # schemas.ArtefactUpdate: inventory number and status stay
RECORD_ERRORS = {
    "conflict": N_("Another artefact of this institution has that inventory number."),
    "too_many_files": N_("Too many photos at once: at most %(count)s."),
    **{code: message for code, message in ERROR_MESSAGES.items() if code in ("bad_image", "image_too_large")},
}


def _validation_messages(request: Request, exc: Exception) -> list[str]:
    t = translator(request)
    if isinstance(exc, ValidationError):
        labels = {f.name: t.gettext(f.label) for f in FIELDS}
        out = []
        for err in exc.errors()[:8]:
            where = ".".join(str(x) for x in err.get("loc", ()))
            message = FIELD_ERRORS.get(err.get("type"))
            if err.get("type") == "value_error" and str(err.get("msg", "")).endswith(REMOVED):
                message = REMOVED
            out.append(f"{labels.get(where, where)}: {t.gettext(message) if message else err.get('msg')}")
        return out
    code = getattr(exc, "code", None)
    if code in RECORD_ERRORS:
        message = t.gettext(RECORD_ERRORS[code], count=MAX_PHOTOS_PER_REQUEST)  # only too_many_files uses it
        label = getattr(exc, "label", "")
        return [f"{label}: {message}" if label else message]
    return [getattr(exc, "message", str(exc))]


def _photos_not_kept(request: Request, images: list[UploadFile] | None) -> list[str]:
    """A browser empties a form's file inputs when the page comes back: say that the photos must be chosen
    again, or the record is saved next time without them."""
    if not any(f is not None and f.filename for f in images or []):
        return []
    return [translator(request).gettext(N_("The photos you chose were not saved: choose them again."))]


async def _photo_inputs(images: list[UploadFile] | None, view: str | None, limit: int) -> list[PhotoInput]:
    files = [f for f in images or [] if f is not None and f.filename]
    if len(files) > MAX_PHOTOS_PER_REQUEST:
        raise AppError(f"At most {MAX_PHOTOS_PER_REQUEST} photos at once.", code="too_many_files")
    return [PhotoInput(data=await read_upload(f, limit), view=view or None, label=f.filename or "") for f in files]


@router.get("/registry/new")
def new_artefact(request: Request, user: RegistryWriter):
    return _edit_page(request, user, None, form_values(None))


@router.post("/registry/new")
async def create_artefact(request: Request, user: RegistryForm, image: list[UploadFile] | None = File(None),
                          view: str = Form("")):
    service = request.app.state.service
    fields, raw = fields_from_form(await request.form())
    try:
        photos = await _photo_inputs(image, view.strip()[:100], service.settings.max_upload_bytes)

        def register():
            with acting_as(user.principal):  # audited as this key, like the API's registry changes
                return service.register_artefact(fields, photos)

        artefact = await run_in_threadpool(register)
    except (AppError, ValidationError) as exc:
        return _edit_page(request, user, None, raw, status=422, view=view.strip()[:100],
                          errors=_validation_messages(request, exc) + _photos_not_kept(request, image))
    return redirect(request, f"/registry/{artefact.id}?saved=1")


def _artefact_or_404(request: Request, artefact_id: int):
    try:
        return request.app.state.service.store.get_artefact(artefact_id)
    except NotFound:
        raise WebError(404, N_("Not found.")) from None


@router.get("/registry/{artefact_id}")
def artefact_page(request: Request, artefact_id: ArtefactId, user: ArtefactReader):
    artefact = _artefact_or_404(request, artefact_id)
    return _edit_page(request, user, artefact, form_values(artefact), saved=request.query_params.get("saved"))


@router.post("/registry/{artefact_id}")
async def update_artefact(request: Request, artefact_id: ArtefactId, user: RegistryForm):
    service = request.app.state.service
    artefact = _artefact_or_404(request, artefact_id)
    fields, raw = fields_from_form(await request.form())
    try:
        if not fields["inventory_number"]:
            raise AppError(translator(request).gettext("The inventory number is required."))

        def update():
            with acting_as(user.principal):
                return service.update_artefact(artefact_id, fields)

        await run_in_threadpool(update)
    except (AppError, ValidationError) as exc:
        return _edit_page(request, user, artefact, raw, status=422, errors=_validation_messages(request, exc))
    return redirect(request, f"/registry/{artefact_id}?saved=1")


@router.post("/registry/{artefact_id}/photos")
async def add_photos(request: Request, artefact_id: ArtefactId, user: RegistryForm,
                     image: list[UploadFile] | None = File(None), view: str = Form("")):
    service = request.app.state.service
    artefact = _artefact_or_404(request, artefact_id)
    try:
        photos = await _photo_inputs(image, view.strip()[:100], service.settings.max_upload_bytes)
        if not photos:
            raise AppError(translator(request).gettext("Choose one or more photos first."))

        def add():
            with acting_as(user.principal):
                return service.add_photos(artefact_id, photos)

        await run_in_threadpool(add)
    except AppError as exc:
        return _edit_page(request, user, artefact, form_values(artefact), status=422, added_view=view.strip()[:100],
                          errors=_validation_messages(request, exc) + _photos_not_kept(request, image))
    return redirect(request, f"/registry/{artefact_id}?saved=1")
