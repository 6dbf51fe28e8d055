"""Content-addressed photo files: ``photos/<first 2 hex>/<sha256>.<ext>`` in the data directory.

Paths come only from the SHA-256 of the bytes and a fixed extension per format, never from
anything a user sent, and files are written atomically so a crash leaves no half-written photo.
"""

from __future__ import annotations

from pathlib import Path

from app.core.files import atomic_write

EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "TIFF": "tif",
    "HEIF": "heic",
    "AVIF": "avif",
    "BMP": "bmp",
    "GIF": "gif",
}
MEDIA_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "tif": "image/tiff",
    "heic": "image/heic",
    "avif": "image/avif",
    "bmp": "image/bmp",
    "gif": "image/gif",
}


class PhotoStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, sha256: str, fmt: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("photo key must be a SHA-256 hex digest")
        return self.root / sha256[:2] / f"{sha256}.{EXTENSIONS.get(fmt.upper(), 'bin')}"

    def put(self, data: bytes, sha256: str, fmt: str) -> Path:
        path = self.path_for(sha256, fmt)
        if path.exists() and path.stat().st_size == len(data):
            return path  # same content, same name: nothing to do
        atomic_write(path, data)
        return path

    def read(self, sha256: str, fmt: str) -> bytes:
        return self.path_for(sha256, fmt).read_bytes()

    def delete(self, sha256: str, fmt: str) -> None:
        self.path_for(sha256, fmt).unlink(missing_ok=True)

    def all_files(self) -> list[Path]:
        if not self.root.exists():
            return []
        return [p for p in self.root.glob("??/*") if p.is_file() and not p.name.startswith(".tmp-")]

    @staticmethod
    def media_type(fmt: str) -> str:
        return MEDIA_TYPES.get(EXTENSIONS.get(fmt.upper(), ""), "application/octet-stream")
