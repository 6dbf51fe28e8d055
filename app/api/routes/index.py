"""Index maintenance for administrators (the same as `heritage-match index rebuild`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from app.api.deps import get_audit, get_service, require
from app.schemas import IndexRebuildReport
from app.security.audit import AuditLog
from app.security.roles import Permission
from app.service import MatchingService

router = APIRouter(prefix="/v1/index", tags=["index"], dependencies=[Depends(require(Permission.rebuild_index))])


@router.post("/rebuild", response_model=IndexRebuildReport)
async def rebuild_index(
    reembed: bool = Query(False, description="First embed photos lacking a vector of the active model."),
    service: MatchingService = Depends(get_service),
    audit: AuditLog = Depends(get_audit),
) -> IndexRebuildReport:
    """Rebuild the index for the active model from the stored vectors."""
    report = await run_in_threadpool(service.rebuild_index, reembed)
    await run_in_threadpool(audit.record, "index.rebuild", model_fingerprint=report["fingerprint"],
                            index_version=report["version"], details=report)
    return IndexRebuildReport(**report)
