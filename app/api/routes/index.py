"""Index maintenance for administrators (the same as `heritage-match index rebuild`)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from app.api.deps import AuditDep, ServiceDep, allowed
from app.schemas import IndexRebuildReport
from app.security.roles import Permission

router = APIRouter(prefix="/v1/index", tags=["index"], dependencies=allowed(Permission.rebuild_index))


@router.post("/rebuild", response_model=IndexRebuildReport)
async def rebuild_index(
    service: ServiceDep,
    audit: AuditDep,
    reembed: bool = Query(False, description="First embed photos lacking a vector of the active model."),
) -> IndexRebuildReport:
    """Rebuild the index for the active model from the stored vectors."""
    report = await run_in_threadpool(service.rebuild_index, reembed)
    await run_in_threadpool(audit.record, "index.rebuild", model_fingerprint=report.fingerprint,
                            index_version=report.version, details=report.model_dump())
    return report
