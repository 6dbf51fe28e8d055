"""RegistryStore: the artefact registry (database rows, and photos' bytes in files or in the database).

The database is the source of truth: the FAISS index is derived from the vectors stored here and
can always be rebuilt from them.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np
from sqlalchemy import create_engine, event, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from app.core.db import is_unique_violation
from app.core.errors import Conflict, NotFound
from app.core.files import FILE_MODE, file_lock, private_dir, private_sqlite
from app.registry import schema
from app.registry.changes import (
    INDEX_REBUILT,
    PHOTOS_ADDED,
    PHOTOS_REMOVED,
    Change,
    changes_after,
    last_seq,
    purge_before,
    record_change,
)
from app.registry.models import (
    OBJECT_VIEW,
    PHASH_SINCE_VERSION,
    SIGNATURE_VERSION,
    Artefact,
    Embedding,
    Photo,
    PhotoSignature,
    object_fingerprint,
)
from app.registry.photos import DatabasePhotoStore, PhotoStore
from app.security.audit import record_event

log = logging.getLogger(__name__)


class StorableSignature(Protocol):
    """What the store keeps of a photo's signature (``app.pipeline.signature.VisualSignature``)."""

    phash: int

    def colour_bytes(self) -> bytes: ...

    def features_bytes(self) -> bytes: ...


@dataclass
class NewPhoto:
    """A decoded, embedded photo ready to be stored."""

    data: bytes
    sha256: str
    format: str
    width: int
    height: int
    vector: np.ndarray | None
    view: str | None = None
    signature: StorableSignature | None = None
    # The object's box embedded alone (an empty vector: the object fills the frame; None: not computed).
    object_vector: np.ndarray | None = None


@dataclass(frozen=True)
class ArtefactFilter:
    status: str | None = None
    institution: str | None = None
    object_type: str | None = None
    text: str | None = None


class RegistryStore:
    def __init__(self, db_url: str, photo_root: Path, photo_store: Literal["files", "database"] = "files"):
        sqlite = db_url.startswith("sqlite")
        connect_args = {"check_same_thread": False, "timeout": 30} if sqlite else {}
        private_sqlite(db_url)  # before SQLite creates the file: its -wal and -shm take the file's mode
        # A server database (PostgreSQL) may restart or drop idle connections: each is checked when taken.
        self.engine = create_engine(db_url, connect_args=connect_args, pool_pre_ping=not sqlite)
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # Every table of the registry database (keys, audit trail, archive, alerts too), at this code's revision:
        # upgraded when the database is behind, refused when it is ahead (app.registry.schema).
        try:
            schema.ensure_current(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Readers use ``photos.read`` and ``photos.media_type`` (app.registry.photos.PhotoBackend) whatever the
        # backend; writes and deletions below differ by backend (files around the transaction, blobs inside it).
        self.photos: PhotoStore | DatabasePhotoStore
        if photo_store == "database":
            self.photos = DatabasePhotoStore(self.sessions)
        elif photo_store == "files":
            self.photos = PhotoStore(photo_root)
        else:
            self.engine.dispose()
            raise ValueError(f"photo_store must be 'files' or 'database', not {photo_store!r}")
        self._write_lock_path = Path(photo_root) / ".write.lock"

    @contextmanager
    def photo_writes(self, exclusive: bool = False):
        """Held shared from writing photo files until their rows commit; held exclusive to delete
        files, so a file is never judged unreferenced while a writer is between file and commit. A file lock
        in the photo folder itself: it binds every process that writes there, whatever the database.
        The database store needs none (its blobs are written in the rows' transaction): it takes no lock and
        makes no folder."""
        if isinstance(self.photos, DatabasePhotoStore):
            yield
            return
        private_dir(self.photos.root)
        with file_lock(self._write_lock_path, shared=not exclusive):
            yield

    def close(self) -> None:
        self.engine.dispose()

    # --- artefacts -------------------------------------------------------------------------

    def create_artefact(self, fields: dict, photos: list[NewPhoto], fingerprint: str | None) -> Artefact:
        """Store an artefact with its photos and their vectors in one transaction."""
        with self.photo_writes(), self.sessions.begin() as s:
            artefact = Artefact(**fields)
            s.add(artefact)
            try:
                s.flush()
            except IntegrityError as exc:
                raise Conflict(
                    f"Artefact {fields.get('inventory_number')!r} of institution "
                    f"{fields.get('institution') or '(none)'!r} is already registered."
                ) from exc
            # Files before the commit: a crash leaves at worst an unreferenced file, never a row
            # pointing at a missing photo. Blobs in the transaction: they commit with the rows or not at all.
            if isinstance(self.photos, DatabasePhotoStore):
                self.photos.add(s, _blob_items(photos))
            else:
                _put_files(self.photos, photos)
            stored = self._attach_photos(s, artefact, photos, fingerprint)
            record_event(s, "artefact.create", artefact_id=artefact.id, model_fingerprint=fingerprint, details={
                "inventory_number": artefact.inventory_number, "institution": artefact.institution,
                "photo_ids": [p.id for p in stored]})
            record_change(s, PHOTOS_ADDED, [p.id for p in stored], fingerprint)
        return self.get_artefact(artefact.id)

    def add_photos(self, artefact_id: int, photos: list[NewPhoto], fingerprint: str | None) -> list[Photo]:
        """Add photos to an artefact; a photo it already has (same bytes) is returned, not duplicated."""
        with self.photo_writes():
            if isinstance(self.photos, PhotoStore):
                _put_files(self.photos, photos)  # before the transaction: no row lock held while writing files
            with self.sessions.begin() as s:
                # Locked (PostgreSQL; SQLite has one writer at a time anyway): two requests adding the same
                # photo to one artefact, or a delete meanwhile, wait for each other instead of colliding.
                artefact = s.get(Artefact, artefact_id, with_for_update=True)
                if artefact is None:
                    raise NotFound(f"No artefact with id {artefact_id}.")
                if isinstance(self.photos, DatabasePhotoStore):
                    self.photos.add(s, _blob_items(photos))
                stored = self._attach_photos(s, artefact, photos, fingerprint)
                ids = [p.id for p in stored]
                record_event(s, "photo.add", artefact_id=artefact_id, model_fingerprint=fingerprint,
                             details={"photo_ids": ids})
                record_change(s, PHOTOS_ADDED, ids, fingerprint)
        return self.photos_by_ids(ids)

    def _attach_photos(self, s: Session, artefact: Artefact, photos: list[NewPhoto], fingerprint: str | None):
        existing = {p.sha256: p for p in s.scalars(select(Photo).where(Photo.artefact_id == artefact.id))}
        stored = []
        for p in photos:
            if p.sha256 in existing:
                # The same photo again: keep its row, but store what was computed for it now. The caller
                # indexes this vector, so the database must hold it too (the active model may be newer
                # than the photo's vectors).
                photo = existing[p.sha256]
                if p.vector is not None and fingerprint:
                    s.merge(_embedding_row(photo.id, fingerprint, p.vector))
                if p.object_vector is not None and fingerprint:
                    s.merge(_embedding_row(photo.id, object_fingerprint(fingerprint), p.object_vector))
                if p.signature is not None:
                    s.merge(_signature_row(photo.id, p.signature))
                stored.append(photo)
                continue
            photo = Photo(
                artefact_id=artefact.id, sha256=p.sha256, format=p.format, view=p.view, width=p.width, height=p.height
            )
            s.add(photo)
            s.flush()
            if p.vector is not None and fingerprint:
                s.add(_embedding_row(photo.id, fingerprint, p.vector))
            if p.object_vector is not None and fingerprint:
                s.add(_embedding_row(photo.id, object_fingerprint(fingerprint), p.object_vector))
            if p.signature is not None:
                s.add(_signature_row(photo.id, p.signature))
            existing[p.sha256] = photo
            stored.append(photo)
        artefact.updated_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        return stored

    def get_artefact(self, artefact_id: int) -> Artefact:
        with self.sessions() as s:
            artefact = s.scalar(
                select(Artefact).options(selectinload(Artefact.photos)).where(Artefact.id == artefact_id)
            )
            if artefact is None:
                raise NotFound(f"No artefact with id {artefact_id}.")
            return artefact

    def find_artefact(self, institution: str, inventory_number: str) -> Artefact | None:
        with self.sessions() as s:
            return s.scalar(
                select(Artefact)
                .options(selectinload(Artefact.photos))
                .where(Artefact.institution == institution, Artefact.inventory_number == inventory_number)
            )

    def artefacts_by_ids(self, ids: list[int]) -> dict[int, Artefact]:
        if not ids:
            return {}
        with self.sessions() as s:
            rows = s.scalars(select(Artefact).where(Artefact.id.in_(ids)))
            return {a.id: a for a in rows}

    def list_artefacts(self, flt: ArtefactFilter, offset: int = 0, limit: int = 50) -> tuple[list[Artefact], int]:
        query = select(Artefact)
        if flt.status:
            query = query.where(Artefact.status == flt.status)
        if flt.institution:
            query = query.where(Artefact.institution == flt.institution)
        if flt.object_type:
            query = query.where(or_(Artefact.object_type == flt.object_type, Artefact.category == flt.object_type))
        if flt.text:
            like = f"%{flt.text.lower()}%"
            query = query.where(
                or_(
                    *(
                        func.lower(col).like(like)
                        for col in (
                            Artefact.title,
                            Artefact.inventory_number,
                            Artefact.description,
                            Artefact.inscriptions,
                            Artefact.distinguishing_features,
                            Artefact.materials,
                            Artefact.subject,
                        )
                    )
                )
            )
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery()))
            rows = s.scalars(
                query.options(selectinload(Artefact.photos)).order_by(Artefact.id).offset(offset).limit(limit)
            ).all()
            return list(rows), int(total or 0)

    def update_artefact(self, artefact_id: int, changes: dict) -> Artefact:
        with self.sessions.begin() as s:
            artefact = s.get(Artefact, artefact_id, with_for_update=True)
            if artefact is None:
                raise NotFound(f"No artefact with id {artefact_id}.")
            for key, value in changes.items():
                setattr(artefact, key, value)
            try:
                s.flush()
            except IntegrityError as exc:
                if not is_unique_violation(exc):
                    raise  # not a duplicate: schemas.ArtefactUpdate should have refused it
                raise Conflict("Another artefact of this institution has that inventory number.") from exc
            record_event(s, "artefact.update", artefact_id=artefact_id, details={"changes": changes})
        return self.get_artefact(artefact_id)

    def delete_artefact(self, artefact_id: int) -> list[int]:
        """Delete the artefact and its photos; returns the deleted photo ids."""
        with self.sessions.begin() as s:
            # Locked first (PostgreSQL), then its photos read: a photo added meanwhile is either committed and
            # listed here, or waits for this delete and finds no artefact.
            artefact = s.scalar(select(Artefact).where(Artefact.id == artefact_id).with_for_update())
            if artefact is None:
                raise NotFound(f"No artefact with id {artefact_id}.")
            gone = [(p.id, p.sha256, p.format) for p in artefact.photos]
            record_event(s, "artefact.delete", artefact_id=artefact_id, details={
                "inventory_number": artefact.inventory_number, "institution": artefact.institution,
                "photo_ids": [pid for pid, _, _ in gone]})
            s.delete(artefact)
            if isinstance(self.photos, DatabasePhotoStore):
                # In this transaction: the blobs go with their last rows, or stay with them on a rollback.
                self.photos.delete_unused(s, [sha for _, sha, _ in gone])
            record_change(s, PHOTOS_REMOVED, [pid for pid, _, _ in gone])
        if gone and isinstance(self.photos, PhotoStore):
            # Files after the commit: a crash before leaves at worst an unreferenced file (removed at the next start).
            with self.photo_writes(exclusive=True):
                for _, sha, fmt in gone:
                    self._delete_file_if_unused(self.photos, sha, fmt)
        return [pid for pid, _, _ in gone]

    def _delete_file_if_unused(self, files: PhotoStore, sha256: str, fmt: str) -> None:
        with self.sessions() as s:
            if s.scalar(select(func.count()).select_from(Photo).where(Photo.sha256 == sha256)) == 0:
                files.delete(sha256, fmt)

    def remove_orphan_files(self, wait_s: float = 5.0) -> int:
        """Delete photo files no photo row references, and temp files of interrupted writes.

        A crash between writing a photo file and committing its rows leaves such a file. Done under
        the exclusive write lock, so no writer is between its files and its commit; when writers
        keep the lock busy for ``wait_s`` the clean-up is left to the next start.

        The database store: blobs no photo row references, which its transactional writes never leave but
        hand-made deletions or a ``db move-photos`` racing a delete may (``DatabasePhotoStore.remove_orphans``).
        """
        if isinstance(self.photos, DatabasePhotoStore):
            removed = self.photos.remove_orphans()
            if removed:
                log.warning("Removed %d stored photos no artefact refers to.", removed)
            return removed
        if not self.photos.root.exists():
            return 0
        deadline = time.monotonic() + wait_s
        fd = os.open(self._write_lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        log.info("Photo store busy: orphan clean-up left to the next start.")
                        return 0
                    time.sleep(0.05)
            with self.sessions() as s:
                known = {self.photos.path_for(sha, fmt).name
                         for sha, fmt in s.execute(select(Photo.sha256, Photo.format))}
            removed = 0
            for path in self.photos.root.glob("??/*"):
                if path.is_file() and (path.name.startswith(".tmp-") or path.name not in known):
                    path.unlink(missing_ok=True)
                    removed += 1
            if removed:
                log.warning("Removed %d photo files no artefact refers to (left by an interrupted write).", removed)
            return removed
        finally:
            os.close(fd)

    def count_artefacts(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Artefact)) or 0)

    # --- photos and vectors ------------------------------------------------------------------

    def get_photo(self, photo_id: int) -> Photo:
        with self.sessions() as s:
            photo = s.get(Photo, photo_id)
            if photo is None:
                raise NotFound(f"No photo with id {photo_id}.")
            return photo

    def photos_by_ids(self, ids: list[int]) -> list[Photo]:
        with self.sessions() as s:
            rows = {p.id: p for p in s.scalars(select(Photo).where(Photo.id.in_(ids)))}
            return [rows[i] for i in ids if i in rows]

    def photo_owner_map(self, photo_ids: list[int]) -> dict[int, int]:
        with self.sessions() as s:
            rows = s.execute(select(Photo.id, Photo.artefact_id).where(Photo.id.in_(photo_ids)))
            return {pid: aid for pid, aid in rows}

    def indexed_photo_ids(self, fingerprint: str, photo_ids: list[int]) -> set[int]:
        with self.sessions() as s:
            rows = s.scalars(
                select(Embedding.photo_id).where(
                    Embedding.model_fingerprint == fingerprint, Embedding.photo_id.in_(photo_ids)
                )
            )
            return set(rows)

    def vectors(self, fingerprint: str) -> tuple[np.ndarray, np.ndarray]:
        """All stored vectors of one model: (ids int64 (N,), vectors float32 (N, dim))."""
        with self.sessions() as s:
            rows = s.execute(
                select(Embedding.photo_id, Embedding.dim, Embedding.vector)
                .where(Embedding.model_fingerprint == fingerprint)
                .order_by(Embedding.photo_id)
            ).all()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.stack([np.frombuffer(r[2], dtype="<f4") for r in rows]).astype(np.float32)
        return ids, vecs

    def vectors_of(self, fingerprint: str, photo_ids: list[int]) -> dict[int, np.ndarray]:
        """The stored vectors of one model for some photos (photo id -> float32 vector)."""
        with self.sessions() as s:
            rows = s.execute(select(Embedding.photo_id, Embedding.vector).where(
                Embedding.model_fingerprint == fingerprint, Embedding.photo_id.in_(photo_ids)))
            return {pid: np.frombuffer(blob, dtype="<f4").astype(np.float32) for pid, blob in rows}

    def photos_after(self, photo_id: int, limit: int = 500, since: dt.datetime | None = None) -> list[Photo]:
        """Photos with an id above ``photo_id`` (ids only grow: the photos added since), oldest first."""
        with self.sessions() as s:
            query = select(Photo).where(Photo.id > photo_id)
            if since is not None:
                query = query.where(Photo.created_at >= since)
            return list(s.scalars(query.order_by(Photo.id).limit(limit)))

    def last_photo_id(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.max(Photo.id))) or 0)

    def vector_ids(self, fingerprint: str) -> np.ndarray:
        """Ids of the photos that have a vector of this model, ascending (no vectors read)."""
        with self.sessions() as s:
            rows = s.scalars(
                select(Embedding.photo_id)
                .where(Embedding.model_fingerprint == fingerprint)
                .order_by(Embedding.photo_id)
            )
            return np.fromiter(rows, dtype=np.int64)

    def photo_ids(self) -> np.ndarray:
        with self.sessions() as s:
            return np.fromiter(s.scalars(select(Photo.id).order_by(Photo.id)), dtype=np.int64)

    def photos_missing_vectors(self, fingerprint: str) -> list[Photo]:
        with self.sessions() as s:
            have = select(Embedding.photo_id).where(Embedding.model_fingerprint == fingerprint)
            return list(s.scalars(select(Photo).where(Photo.id.not_in(have)).order_by(Photo.id)))

    def put_vectors(self, fingerprint: str, items: list[tuple[int, np.ndarray]]) -> list[int]:
        """Store vectors of photos that still exist (another worker may delete one meanwhile); returns
        the ids stored."""
        with self.sessions.begin() as s:
            alive = set(s.scalars(select(Photo.id).where(Photo.id.in_([pid for pid, _ in items]))))
            for photo_id, vec in items:
                if photo_id in alive:
                    s.merge(_embedding_row(photo_id, fingerprint, vec))
            stored = [pid for pid, _ in items if pid in alive]
            record_change(s, PHOTOS_ADDED, stored, fingerprint)
            return stored

    def put_object_vectors(self, fingerprint: str, items: list[tuple[int, np.ndarray]]) -> int:
        """Store object-view vectors (``object_fingerprint``) of photos that still exist. They are not
        indexed, so no change is recorded for the replicas."""
        with self.sessions.begin() as s:
            alive = set(s.scalars(select(Photo.id).where(Photo.id.in_([pid for pid, _ in items]))))
            for photo_id, vec in items:
                if photo_id in alive:
                    s.merge(_embedding_row(photo_id, object_fingerprint(fingerprint), vec))
            return sum(1 for pid, _ in items if pid in alive)

    def last_change_seq(self) -> int:
        with self.sessions() as s:
            return last_seq(s)

    def changes_after(self, seq: int, limit: int = 1000) -> list[Change]:
        with self.sessions() as s:
            return changes_after(s, seq, limit)

    def purge_changes(self, before: dt.datetime) -> int:
        with self.sessions.begin() as s:
            return purge_before(s, before)

    def record_index_rebuilt(self, fingerprint: str) -> None:
        """Tell every replica to rebuild its index from the stored vectors of ``fingerprint``."""
        with self.sessions.begin() as s:
            record_change(s, INDEX_REBUILT, fingerprint=fingerprint)

    # --- signatures (perceptual hash, colour, local features) ----------------------------------

    def signatures(self, photo_ids: list[int]) -> dict[int, PhotoSignature]:
        """Current-version signatures of these photos (missing or outdated ones are absent)."""
        with self.sessions() as s:
            rows = s.scalars(select(PhotoSignature).where(
                PhotoSignature.photo_id.in_(photo_ids), PhotoSignature.version == SIGNATURE_VERSION))
            return {r.photo_id: r for r in rows}

    def put_signatures(self, items: Sequence[tuple[int, StorableSignature]]) -> None:
        with self.sessions.begin() as s:
            for photo_id, sig in items:
                if s.get(Photo, photo_id) is not None:  # the photo may have been deleted meanwhile
                    s.merge(_signature_row(photo_id, sig))

    def photo_hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """(photo ids, perceptual hashes) of every photo with a signature whose hash is current (an
        outdated signature's other parts are recomputed when the photo is compared)."""
        with self.sessions() as s:
            rows = s.execute(select(PhotoSignature.photo_id, PhotoSignature.phash)
                             .where(PhotoSignature.version >= PHASH_SINCE_VERSION)).all()
        return (np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                np.fromiter((r[1] for r in rows), np.int64, len(rows)))

    def photos_missing_signatures(self) -> list[Photo]:
        with self.sessions() as s:
            have = select(PhotoSignature.photo_id).where(PhotoSignature.version == SIGNATURE_VERSION)
            return list(s.scalars(select(Photo).where(Photo.id.not_in(have)).order_by(Photo.id)))

    def fingerprints(self) -> dict[str, int]:
        """Models with stored vectors, and how many photos each has (object views not counted)."""
        with self.sessions() as s:
            rows = s.execute(
                select(Embedding.model_fingerprint, func.count()).group_by(Embedding.model_fingerprint)
            )
            return {fp: n for fp, n in rows if not fp.endswith(OBJECT_VIEW)}


def _put_files(files: PhotoStore, photos: list[NewPhoto]) -> None:
    for p in photos:
        files.put(p.data, p.sha256, p.format)


def _blob_items(photos: list[NewPhoto]) -> list[tuple[str, str, bytes]]:
    return [(p.sha256, p.format, p.data) for p in photos]


def _embedding_row(photo_id: int, fingerprint: str, vector: np.ndarray) -> Embedding:
    vec = np.asarray(vector, dtype="<f4").ravel()
    return Embedding(photo_id=photo_id, model_fingerprint=fingerprint, dim=int(vec.size), vector=vec.tobytes())


def _signature_row(photo_id: int, sig: StorableSignature) -> PhotoSignature:
    return PhotoSignature(photo_id=photo_id, version=SIGNATURE_VERSION, phash=sig.phash,
                          colour=sig.colour_bytes(), features=sig.features_bytes())


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
