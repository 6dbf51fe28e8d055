"""Where registry photos' bytes are kept (``HM_PHOTO_STORE``): two backends behind one reading interface.

``PhotoStore`` (files): content-addressed files ``photos/<first 2 hex>/<sha256>.<ext>`` in the data directory.
Paths come only from the SHA-256 of the bytes and a fixed extension per format, never from anything a user
sent, and files are written atomically so a crash leaves no half-written photo. Every process must see the
folder; ``RegistryStore`` writes the files before its rows commit, under a file lock.

``DatabasePhotoStore`` (database): one ``photo_blobs`` row per content in the registry database, written and
deleted in the caller's transaction, the one that adds or removes the photo rows, so that replicas on several
machines need no shared folder and a photo and its rows always commit together.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import ColumnElement, delete, exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.core.files import atomic_write
from app.registry.models import Photo, PhotoBlob

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


class PhotoBackend(Protocol):
    """What readers of registry photos need, whichever backend keeps the bytes. A missing photo raises
    ``FileNotFoundError`` (an ``OSError``, which readers already treat as "photo unavailable").

    Writes and deletions are ``RegistryStore``'s alone, and differ by nature: files are written before the rows
    commit and deleted after, under a file lock; blobs are written and deleted inside the rows' transaction."""

    def read(self, sha256: str, fmt: str) -> bytes: ...

    def has(self, sha256: str, fmt: str) -> bool: ...

    def media_type(self, fmt: str) -> str: ...


def check_key(sha256: str) -> None:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("photo key must be a SHA-256 hex digest")


def media_type(fmt: str) -> str:
    return MEDIA_TYPES.get(EXTENSIONS.get(fmt.upper(), ""), "application/octet-stream")


class PhotoStore:
    """Photo files in one folder (the registry's with ``HM_PHOTO_STORE=files``, and the listings archive's)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, sha256: str, fmt: str) -> Path:
        check_key(sha256)
        return self.root / sha256[:2] / f"{sha256}.{EXTENSIONS.get(fmt.upper(), 'bin')}"

    def put(self, data: bytes, sha256: str, fmt: str) -> Path:
        path = self.path_for(sha256, fmt)
        if path.exists() and path.stat().st_size == len(data):
            return path  # same content, same name: nothing to do
        atomic_write(path, data)
        return path

    def read(self, sha256: str, fmt: str) -> bytes:
        return self.path_for(sha256, fmt).read_bytes()

    def has(self, sha256: str, fmt: str) -> bool:
        return self.path_for(sha256, fmt).is_file()

    def delete(self, sha256: str, fmt: str) -> None:
        self.path_for(sha256, fmt).unlink(missing_ok=True)

    def all_files(self) -> list[Path]:
        if not self.root.exists():
            return []
        return [p for p in self.root.glob("??/*") if p.is_file() and not p.name.startswith(".tmp-")]

    media_type = staticmethod(media_type)


# Recent reads kept in memory: a search verifies its few best candidates against their registry photos, and
# the web pages show the same photos again; 32 MiB is a few hundred photos per process.
READ_CACHE_BYTES = 32 << 20


class DatabasePhotoStore:
    """Photo bytes in the registry database's ``photo_blobs`` table, once per SHA-256 (or, given ``blob`` and
    ``referenced``, another table of the same shape: the listings archive's ``archive_blobs``).

    ``add`` and ``delete_unused`` work in the caller's session, the transaction that adds or removes the photo
    rows: the blob commits with its rows or not at all, so no crash leaves an unreferenced blob or a row without
    its bytes, and no lock is needed beyond the database's own row locks (see ``delete_unused``). Reads are one
    primary-key SELECT, with a small in-memory LRU of recent reads: a SHA-256 always names the same bytes, so a
    cached photo can never be stale.
    """

    def __init__(self, sessions: sessionmaker[Session], cache_bytes: int = READ_CACHE_BYTES, blob: Any = PhotoBlob,
                 referenced: Callable[[], ColumnElement[bool]] | None = None):
        """``blob``: the table's class (columns sha256, format, data); ``referenced``: the condition that some row
        still names a blob of it (default: a registry photo with its SHA-256)."""
        self.sessions = sessions
        self.blob = blob
        self.referenced = referenced or (lambda: exists().where(Photo.sha256 == self.blob.sha256))
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._cache_lock = threading.Lock()

    media_type = staticmethod(media_type)

    def read(self, sha256: str, fmt: str) -> bytes:
        check_key(sha256)
        with self._cache_lock:
            data = self._cache.get(sha256)
            if data is not None:
                self._cache.move_to_end(sha256)
                return data
        with self.sessions() as s:
            stored = s.scalar(select(self.blob.data).where(self.blob.sha256 == sha256))
        if stored is None:
            raise FileNotFoundError(f"The registry database holds no bytes for photo {sha256}.")
        data = bytes(stored)
        self._remember(sha256, data)
        return data

    def has(self, sha256: str, fmt: str) -> bool:
        check_key(sha256)
        with self.sessions() as s:
            return s.scalar(select(self.blob.sha256).where(self.blob.sha256 == sha256)) is not None

    def _remember(self, sha256: str, data: bytes) -> None:
        if len(data) > self.cache_bytes // 8:
            return  # one huge photo would push out everything else
        with self._cache_lock:
            if sha256 in self._cache:
                return
            self._cache[sha256] = data
            self._cached_bytes += len(data)
            while self._cached_bytes > self.cache_bytes:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= len(dropped)

    def add(self, s: Session, photos: Iterable[tuple[str, str, bytes]]) -> None:
        """Store (sha256, format, bytes) of photos whose rows the caller adds in ``s``'s transaction.

        PostgreSQL: an upsert that, when the blob is already there, updates it to itself, which takes its row
        lock until the commit: a ``delete_unused`` of another transaction waits for this one, then sees its rows
        and keeps the blob (or this one waits for that delete, then inserts the blob again). Blobs are taken in
        SHA-256 order, as ``delete_unused`` takes them, so two transactions never wait for each other in a
        circle. SQLite has one writer at a time: inserting when absent is enough.
        """
        unique = {sha: (fmt, data) for sha, fmt, data in photos}
        if not unique:
            return
        for sha in sorted(unique):
            check_key(sha)
            fmt, data = unique[sha]
            row = {"sha256": sha, "format": fmt, "data": data}
            if s.get_bind().dialect.name == "postgresql":
                upsert = postgresql.insert(self.blob).values(row)
                s.execute(upsert.on_conflict_do_update(index_elements=[self.blob.sha256],
                                                       set_={"format": upsert.excluded["format"]}))
            else:
                s.execute(sqlite.insert(self.blob).values(row).on_conflict_do_nothing(
                    index_elements=[self.blob.sha256]))

    def delete_unused(self, s: Session, sha256s: Iterable[str]) -> list[str]:
        """Delete, in ``s``'s transaction, the blobs of these photos that no photo row references any more (the
        caller has just deleted its rows); returns the SHA-256 of those deleted.

        Two statements on purpose. The first locks the blobs (PostgreSQL; SQLite has one writer at a time),
        waiting for any transaction that is adding a photo with the same bytes (``add`` holds the blob's lock).
        The second judges "unused" with a snapshot taken after that wait, so it sees that transaction's rows:
        one DELETE alone would re-check only the blob row after the wait, not the photo rows, and could delete a
        blob that a row committed meanwhile needs.
        """
        wanted = sorted(set(sha256s))
        if not wanted:
            return []
        s.flush()  # the caller's deleted photo rows must be gone before "unused" is judged
        s.execute(select(self.blob.sha256).where(self.blob.sha256.in_(wanted))
                  .order_by(self.blob.sha256).with_for_update())
        return self._delete_unreferenced(s, wanted)

    def remove_orphans(self) -> int:
        """Delete blobs that no photo row references; returns how many.

        ``add`` and ``delete_unused`` leave none: a blob commits with its rows and goes with its last one. Blobs
        become orphans only by other ways: rows deleted by hand in SQL, or ``db move-photos --to database``
        copying a photo whose row a server deleted meanwhile. A blob being added is not committed yet, so this
        never sees it; the lock-then-judge order is ``delete_unused``'s.
        """
        with self.sessions.begin() as s:
            candidates = list(s.scalars(select(self.blob.sha256).where(~self.referenced())
                                        .order_by(self.blob.sha256).with_for_update()))
            if not candidates:
                return 0
            return len(self._delete_unreferenced(s, candidates))

    def _delete_unreferenced(self, s: Session, sha256s: Sequence[str]) -> list[str]:
        statement = (delete(self.blob).where(self.blob.sha256.in_(sha256s), ~self.referenced())
                     .returning(self.blob.sha256).execution_options(synchronize_session=False))
        deleted = list(s.scalars(statement))
        # Forgotten already before the commit: a rollback then costs one read again, never a wrong answer.
        with self._cache_lock:
            for sha in deleted:
                dropped = self._cache.pop(sha, None)
                if dropped is not None:
                    self._cached_bytes -= len(dropped)
        return deleted

    def stored_keys(self) -> set[str]:
        """The SHA-256 of every blob (for ``db move-photos``)."""
        with self.sessions() as s:
            return set(s.scalars(select(self.blob.sha256)))
