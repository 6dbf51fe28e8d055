"""Request dependencies: the shared service and bounded upload reading."""

from __future__ import annotations

from fastapi import Request, UploadFile

from app.errors import BadImage, ImageTooLarge
from app.service import MatchingService

CHUNK = 1 << 20


def get_service(request: Request) -> MatchingService:
    return request.app.state.service


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
