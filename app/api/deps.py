"""Request dependencies: the shared service, who is calling and what they may do, bounded uploads."""

from __future__ import annotations

from fastapi import Depends, Path, Request, UploadFile
from fastapi.security import HTTPBearer

from app.core.errors import BadImage, Forbidden, ImageTooLarge, Unauthorized
from app.schemas import ErrorResponse
from app.security.actor import Principal
from app.security.audit import AuditLog
from app.security.roles import Permission
from app.service import MatchingService

CHUNK = 1 << 20
DB_ID_MAX = 2**63 - 1  # a database integer: larger ids would fail in the driver, not as a 404


def id_path(what: str):
    """A path parameter holding a row id."""
    return Path(..., ge=1, le=DB_ID_MAX, description=f"The {what}'s id.")

NO_KEY_MESSAGE = (
    "This endpoint needs an API key, sent as `Authorization: Bearer <key>`. An administrator creates one "
    "with `heritage-match keys create --name NAME --role officer` (roles: admin, registrar, officer, monitor)."
)
BAD_KEY_MESSAGE = "The API key is unknown or revoked. Ask an administrator for a valid key."

# Errors every /v1 endpoint may answer, for the OpenAPI schema.
PROTECTED_RESPONSES = {
    401: {"model": ErrorResponse, "description": "No API key, or an unknown or revoked one."},
    403: {"model": ErrorResponse, "description": "The key's role does not allow this."},
    413: {"model": ErrorResponse, "description": "Request or file over the size limit."},
    422: {"model": ErrorResponse, "description": "Invalid request."},
    429: {"model": ErrorResponse, "description": "Too many requests for this key; see Retry-After."},
}

# Documents the scheme in OpenAPI (the "Authorize" button of /docs); the middleware does the checking.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key from `heritage-match keys create`.")


def get_service(request: Request) -> MatchingService:
    return request.app.state.service


def get_audit(request: Request) -> AuditLog:
    return request.app.state.audit


def get_principal(request: Request, _=Depends(bearer_scheme)) -> Principal:
    """Set by the authentication middleware, which runs before the body is read."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthorized(NO_KEY_MESSAGE)
    return principal


def require(*permissions: Permission):
    """A dependency that lets the request through when its key has any of ``permissions``."""

    def check(principal: Principal = Depends(get_principal)) -> Principal:
        if not any(principal.can(p) for p in permissions):
            raise Forbidden(f"The {principal.role.value} role may not do this.")
        return principal

    check.permissions = permissions  # read by the role-matrix test
    return check


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """Read an uploaded file, refusing it as soon as it passes ``limit`` bytes."""
    if upload is None or not hasattr(upload, "read"):
        raise BadImage("Send the photo as a multipart file field.")
    parts, size = [], 0
    while chunk := await upload.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise ImageTooLarge(f"The file is larger than the limit of {limit / 1024 / 1024:.0f} MB.")
        parts.append(chunk)
    return b"".join(parts)
