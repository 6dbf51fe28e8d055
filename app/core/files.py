"""Files: crash-safe writes, inter-process locks for the data directory, SHA-256 of bytes and files,
private modes for everything the service keeps.

The data directory holds the registry, key hashes, the audit trail and officers' query photos; scan
outputs hold listing matches. Every file made there is 0600 and every folder 0700, whatever the
process's umask: modes are given when a file is created, not left to the umask.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Make a folder (and its missing parents) readable by this user only; tighten it if it exists."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, DIR_MODE)
    return path


def private_data_dir(path: Path) -> Path:
    """The data directory: private, with the files directly in it (database, index, secret) tightened.

    A registry made by an older release under umask 022 is closed to other users when it is opened; the
    folder's own mode (0700) already closes the photo store beneath it, so that is not walked.
    """
    path = private_dir(path)
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False):
            _tighten(Path(entry.path), FILE_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create an empty file 0600 if missing, tighten an existing one (a registry made by an older release).

    Called before SQLite opens a database: SQLite gives its -wal and -shm files the database file's mode.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.close(fd)
    _tighten(path, FILE_MODE)
    return path


def private_opener(path: str, flags: int) -> int:
    """``open(..., opener=private_opener)``: a file the call creates is 0600 whatever the umask."""
    return os.open(path, flags, FILE_MODE)


def private_sqlite(db_url: str) -> None:
    """For a SQLite URL naming a file: make the file (and any -wal, -shm left beside it) private."""
    prefix = "sqlite:///"
    if not db_url.startswith(prefix) or db_url[len(prefix):] in ("", ":memory:") or "mode=memory" in db_url:
        return
    path = Path(db_url[len(prefix):].split("?", 1)[0])
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            _tighten(side, FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, mode)
    except PermissionError:
        pass  # not ours to change (a shared folder given as the output): the files made in it still are 0600


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temp file in the same folder, fsync, rename, fsync the folder: after a crash
    the file is either the old one or the new one, never a mix. The file is 0600 (mkstemp's mode)."""
    path = Path(path)
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def file_lock(path: Path, shared: bool = False):
    """An advisory lock between processes (uvicorn workers, the CLI) on one data directory."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 that names a photo (content-addressed store, duplicate checks)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks (model weights and exports are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
