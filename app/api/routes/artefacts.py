from __future__ import annotations

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.api.deps import ArtefactId, ArtefactReader, AuditDep, RowOffset, ServiceDep, allowed
from app.api.presenters import artefact_outs
from app.core.errors import AppError
from app.http.requests import MAX_PHOTOS_PER_REQUEST, read_upload
from app.registry.access import readable_artefact
from app.registry.models import ArtefactStatus
from app.registry.store import ArtefactFilter
from app.schemas import ArtefactCreate, ArtefactOut, ArtefactPage, ArtefactUpdate, ErrorResponse, PhotoOut
from app.security.roles import Permission
from app.service import PhotoInput

router = APIRouter(prefix="/v1/artefacts", tags=["artefacts"])

NOT_FOUND: dict[int | str, dict] = {404: {"model": ErrorResponse, "description": "No such artefact."}}
CONFLICT: dict[int | str, dict] = {409: {"model": ErrorResponse, "description": "Inventory number already registered."}}
WRITE = allowed(Permission.write_registry)


@router.post("", response_model=ArtefactOut, status_code=201, responses=CONFLICT, dependencies=WRITE)
def create_artefact(body: ArtefactCreate, service: ServiceDep) -> ArtefactOut:
    """Register an artefact record; add its photos with POST /v1/artefacts/{id}/photos."""
    artefact = service.register_artefact(body.model_dump(mode="python"), [])
    return artefact_outs(service, [artefact])[0]


@router.get("", response_model=ArtefactPage, dependencies=allowed(Permission.list_registry))
def list_artefacts(
    service: ServiceDep,
    status: ArtefactStatus | None = None,
    institution: str | None = Query(None, max_length=300),
    type: str | None = Query(None, max_length=200, description="Category or specific type."),
    q: str | None = Query(None, max_length=200, description="Text in title, inventory number, description..."),
    offset: RowOffset = 0,
    limit: int = Query(50, ge=1, le=500),
) -> ArtefactPage:
    flt = ArtefactFilter(status=status.value if status else None, institution=institution, object_type=type, text=q)
    rows, total = service.list_artefacts(flt, offset, limit)
    return ArtefactPage(items=artefact_outs(service, rows), total=total, offset=offset, limit=limit)


@router.get("/{artefact_id}", response_model=ArtefactOut, responses=NOT_FOUND)
def get_artefact(
    artefact_id: ArtefactId, principal: ArtefactReader, service: ServiceDep, audit: AuditDep
) -> ArtefactOut:
    """The record; an officer reads only artefacts its own searches matched."""
    return artefact_outs(service, [readable_artefact(principal, artefact_id, service.store, audit)])[0]


@router.patch("/{artefact_id}", response_model=ArtefactOut, responses={**NOT_FOUND, **CONFLICT}, dependencies=WRITE)
def update_artefact(
    body: ArtefactUpdate, artefact_id: ArtefactId, service: ServiceDep
) -> ArtefactOut:
    changes = body.model_dump(mode="python", exclude_unset=True)
    return artefact_outs(service, [service.update_artefact(artefact_id, changes)])[0]


@router.delete("/{artefact_id}", status_code=204, responses=NOT_FOUND, dependencies=WRITE)
def delete_artefact(artefact_id: ArtefactId, service: ServiceDep) -> Response:
    service.delete_artefact(artefact_id)
    return Response(status_code=204)


@router.post(
    "/{artefact_id}/photos",
    response_model=list[PhotoOut],
    status_code=201,
    responses={**NOT_FOUND, 400: {"model": ErrorResponse, "description": "More than 50 photos in one request "
                                                                        "(too_many_files)."},
               413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    dependencies=WRITE,
)
async def add_photos(
    artefact_id: ArtefactId,
    service: ServiceDep,
    image: list[UploadFile] = File(..., description="One or more photos of the artefact."),
    view: str | None = Form(None, max_length=100, description="View label: front, back, detail..."),
) -> list[PhotoOut]:
    """Add photos; all are stored and indexed together, or none if one is unreadable."""
    if len(image) > MAX_PHOTOS_PER_REQUEST:
        raise AppError(f"At most {MAX_PHOTOS_PER_REQUEST} photos per request.", code="too_many_files")
    service.store.get_artefact(artefact_id)  # 404 before reading the uploads
    inputs = [
        PhotoInput(data=await read_upload(f, service.settings.max_upload_bytes), view=view, label=f"photo {i + 1}")
        for i, f in enumerate(image)
    ]
    stored = await run_in_threadpool(service.add_photos, artefact_id, inputs)
    artefact = service.store.get_artefact(artefact_id)
    outs = {p.id: p for p in artefact_outs(service, [artefact])[0].photos}
    return [outs[p.id] for p in stored if p.id in outs]
