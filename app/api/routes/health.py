from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServiceDep
from app.api.presenters import calibration_status
from app.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
def healthz(service: ServiceDep) -> Health:
    """Liveness, the active model and its fingerprint, the calibration in force, and the index state."""
    return Health(
        status="ok",
        model=service.model_info(),
        index=service.index_status(),
        artefacts=service.store.count_artefacts(),
        calibration=calibration_status(service.calibration),
    )


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Not ready: no index, or one of another model."}})
def readyz(service: ServiceDep):
    """Ready when the model is loaded and the index is usable with it (200), else 503 with the same body."""
    status = service.index_status()
    ready = bool(status.loaded and status.matches_model)
    body = Readiness(ready=ready, index=status).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=200 if ready else 503)
