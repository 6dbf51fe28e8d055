"""Where a dump's image bytes come from: a folder, a tar or zip archive, or (with --fetch) the web.

Sources are small picklable objects: decode workers (processes, Ray tasks) read the bytes they
decode themselves, so the driver never holds more than a reference. Archive members are read in
place, never extracted, and every name is checked so that a hostile dump cannot reach a file
outside its own folder or archive.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import zipfile
from pathlib import Path
from typing import Protocol

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".bmp", ".gif"}
URL_PREFIXES = ("http://", "https://")


class ImageUnavailable(Exception):
    """The image named by a listing cannot be read (missing, unsafe path, too large, not fetched)."""


class ImageSource(Protocol):
    """What decode workers read a dump's images from: ``FolderSource``, ``TarSource`` or ``ZipSource``."""

    def read(self, ref: str) -> bytes: ...


def is_url(ref: str) -> bool:
    return ref.lower().startswith(URL_PREFIXES)


def has_scheme(ref: str) -> bool:
    """file:, ftp:, data: and the like: refused rather than read as a relative path."""
    head, sep, _ = ref.partition(":")
    return bool(sep) and len(head) > 1 and head.replace("+", "").replace("-", "").replace(".", "").isalnum()


def is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES


def safe_name(ref: str, base: str = "") -> str:
    """A reference joined to ``base`` inside the dump, normalised; raises when it would leave the dump."""
    if "\x00" in ref:
        raise ImageUnavailable("the image path contains a NUL byte")
    ref = ref.replace("\\", "/").strip()
    if not ref:
        raise ImageUnavailable("the image path is empty")
    if ref.startswith("/") or (len(ref) > 1 and ref[1] == ":"):
        raise ImageUnavailable(f"absolute image path {ref!r} is refused: paths are relative to the dump")
    joined = posixpath.normpath(posixpath.join(base, ref)) if base else posixpath.normpath(ref)
    if joined == ".." or joined.startswith("../") or joined == ".":
        raise ImageUnavailable(f"image path {ref!r} leaves the dump's folder")
    return joined


def read_capped(f, max_bytes: int, what: str) -> bytes:
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageUnavailable(f"{what} is larger than the limit of {max_bytes // (1024 * 1024)} MB")
    return data


class FolderSource:
    """Images in a folder (a directory dump, or the folder beside a JSONL/CSV dump)."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = str(Path(root).resolve())
        self.max_bytes = max_bytes

    def read(self, ref: str) -> bytes:
        name = safe_name(ref)
        path = os.path.join(self.root, *name.split("/"))
        real = os.path.realpath(path)
        if not real.startswith(self.root + os.sep):  # a symlink pointing out of the dump
            raise ImageUnavailable(f"image path {ref!r} leaves the dump's folder")
        if not os.path.isfile(real):
            raise ImageUnavailable(f"image file {ref!r} not found")
        with open(real, "rb") as f:
            return read_capped(f, self.max_bytes, f"image {ref!r}")


class TarSource:
    """Members of a tar archive (optionally gzip/bz2/xz), read in place; opened once per process."""

    def __init__(self, path: Path, base: str, max_bytes: int):
        self.path = str(Path(path).resolve())
        self.base = base
        self.max_bytes = max_bytes
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] | None = None

    def __getstate__(self):  # open handles stay in the process that opened them
        return {"path": self.path, "base": self.base, "max_bytes": self.max_bytes, "_tar": None, "_members": None}

    def _open(self) -> dict[str, tarfile.TarInfo]:
        if self._members is None:
            self._tar = tarfile.open(self.path, "r:*")
            self._members = {}
            for m in self._tar.getmembers():
                try:
                    self._members.setdefault(safe_name(m.name), m)
                except ImageUnavailable:
                    continue  # a member with an unsafe name can never be read
        return self._members

    def read(self, ref: str) -> bytes:
        name = safe_name(ref, self.base)
        member = self._open().get(name)
        if member is None:
            raise ImageUnavailable(f"image {ref!r} is not in the archive")
        if not member.isreg():  # links could point anywhere: only plain files are read
            raise ImageUnavailable(f"archive member {ref!r} is not a plain file")
        if member.size > self.max_bytes:
            raise ImageUnavailable(f"image {ref!r} is larger than the limit of {self.max_bytes // (1024 * 1024)} MB")
        assert self._tar is not None  # opened by _open()
        f = self._tar.extractfile(member)
        return read_capped(f, self.max_bytes, f"image {ref!r}")

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        self._tar = self._members = None


class ZipSource:
    """Members of a zip archive, read in place; opened once per process."""

    def __init__(self, path: Path, base: str, max_bytes: int):
        self.path = str(Path(path).resolve())
        self.base = base
        self.max_bytes = max_bytes
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, zipfile.ZipInfo] | None = None

    def __getstate__(self):
        return {"path": self.path, "base": self.base, "max_bytes": self.max_bytes, "_zip": None, "_members": None}

    def _open(self) -> dict[str, zipfile.ZipInfo]:
        if self._members is None:
            self._zip = zipfile.ZipFile(self.path)
            self._members = {}
            for info in self._zip.infolist():
                try:
                    if not info.is_dir():
                        self._members.setdefault(safe_name(info.filename), info)
                except ImageUnavailable:
                    continue
        return self._members

    def read(self, ref: str) -> bytes:
        name = safe_name(ref, self.base)
        info = self._open().get(name)
        if info is None:
            raise ImageUnavailable(f"image {ref!r} is not in the archive")
        if info.file_size > self.max_bytes:
            raise ImageUnavailable(f"image {ref!r} is larger than the limit of {self.max_bytes // (1024 * 1024)} MB")
        assert self._zip is not None  # opened by _open()
        with self._zip.open(info) as f:  # the declared size may lie: the read is capped too
            return read_capped(f, self.max_bytes, f"image {ref!r}")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._zip = self._members = None
