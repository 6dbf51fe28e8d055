"""ORM rows -> API types."""

from __future__ import annotations

from app.pipeline.calibrate import Calibration, calibration_file_name
from app.registry.models import Artefact, Photo
from app.schemas import RECORD_FIELDS, ArtefactOut, CalibrationStatus, PhotoOut, photo_url
from app.service import MatchingService


def photo_out(photo: Photo, indexed: bool) -> PhotoOut:
    return PhotoOut(
        id=photo.id, artefact_id=photo.artefact_id, sha256=photo.sha256, view=photo.view, width=photo.width,
        height=photo.height, format=photo.format, indexed=indexed, url=photo_url(photo.id),
        thumbnail_url=photo_url(photo.id, thumb=True),
    )


def artefact_outs(service: MatchingService, artefacts: list[Artefact]) -> list[ArtefactOut]:
    photo_ids = [p.id for a in artefacts for p in a.photos]
    indexed = service.indexed_photo_ids(photo_ids)
    return [
        ArtefactOut(
            id=a.id, created_at=a.created_at, updated_at=a.updated_at,
            photos=[photo_out(p, p.id in indexed) for p in a.photos],
            **{name: getattr(a, name) for name in RECORD_FIELDS},
        )
        for a in artefacts
    ]


def calibration_status(cal: Calibration) -> CalibrationStatus:
    """The calibration in force as /healthz shows it."""
    if not cal.calibrated:
        return CalibrationStatus(origin="none")
    return CalibrationStatus(origin="data-dir" if cal.origin == "data-dir" else "shipped",
                             fitted=cal.source.get("fitted"), path=calibration_file_name(cal.model),
                             held_out=cal.held_out() or None)
