"""What a route needs of its request, for the API and the web pages alike: the shared service and
audit trail, the calling key and its permissions, row ids in paths, and bounded uploads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, Path, Request, UploadFile, params
from fastapi.security import HTTPBearer

from app.core.errors import BadImage, Forbidden, ImageTooLarge, Unauthorized
from app.security.actor import Principal
from app.security.audit import AuditLog
from app.security.roles import Permission
from app.service import MatchingService

CHUNK = 1 << 20
DB_ID_MAX = 2**63 - 1  # a database integer: larger ids would fail in the driver, not as a 404
MAX_PHOTOS_PER_REQUEST = 50  # photos added to a record at once, through the API or the web form

NO_KEY_MESSAGE = (
    "This endpoint needs an API key, sent as `Authorization: Bearer <key>`. An administrator creates one "
    "with `heritage-match keys create --name NAME --role officer` (roles: admin, registrar, officer, monitor)."
)
BAD_KEY_MESSAGE = "The API key is unknown or revoked. Ask an administrator for a valid key."

# Documents the scheme in OpenAPI (the "Authorize" button of /docs); the middleware does the checking.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key from `heritage-match keys create`.")


def row_id(what: str) -> params.Path:
    """A path parameter holding a row id, for ``Annotated[int, row_id("artefact")]``."""
    return Path(ge=1, le=DB_ID_MAX, description=f"The {what}'s id.")


def get_service(request: Request) -> MatchingService:
    return request.app.state.service


def get_audit(request: Request) -> AuditLog:
    return request.app.state.audit


def get_principal(request: Request, _: Any = Depends(bearer_scheme)) -> Principal:
    """Set by the authentication middleware, which runs before the body is read."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthorized(NO_KEY_MESSAGE)
    return principal


def require(*permissions: Permission) -> Callable[..., Principal]:
    """A dependency that lets the request through when its key has any of ``permissions``."""

    def check(principal: Principal = Depends(get_principal)) -> Principal:
        if not any(principal.can(p) for p in permissions):
            raise Forbidden(f"The {principal.role.value} role may not do this.")
        return principal

    # Read by the authentication middleware, which refuses a role the route does not allow before the body
    # is read (and by the role-matrix test).
    check.permissions = permissions  # type: ignore[attr-defined]
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
