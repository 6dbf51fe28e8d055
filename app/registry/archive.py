"""The listings archive: every listing photo a scan (or a monitor's search naming its listing) processed.

Four tables in the registry database, beside the registry's own:

- ``archive_photos``: one row per distinct photo (its SHA-256), with a downsized JPEG copy kept in the
  content-addressed folder ``<data_dir>/archive/`` (``<2 hex>/<sha256 of the copy>.jpg``, 0600) and the
  full bytes beside it only when ``archive_keep_full`` is on;
- ``archive_listings``: one row per listing (platform and listing id), with what the listing said the
  last time it was seen (URL, title, seller, price...);
- ``archive_sightings``: which photo was seen in which listing, when first and last, how many times;
- ``archive_vectors``: the photos' vectors per model fingerprint, numbered in the order they were
  stored (``id``, the sequence the archive's index catches up with: ``app.pipeline.archive_index``).

A photo seen again (in the same listing, or the same bytes in another listing) is recorded as seen
again: ``times_seen`` and ``last_seen`` of the photo, the listing and the sighting move on, nothing is
stored twice. Ids are never reused (AUTOINCREMENT), so alerts and the index never mistake a new photo
for a purged one.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from app.core.db import Base, utcnow
from app.core.files import file_lock, private_dir, sha256_hex
from app.registry.photos import DatabasePhotoStore, PhotoStore

log = logging.getLogger(__name__)
T = TypeVar("T")

COPY_FORMAT = "JPEG"
PAGE = 10_000  # vectors a page when streaming them (20 MB at 512 float32)
_IN_BATCH = 500  # ids in one IN (...) clause: far below any database's limit on bound parameters
_RETRIES = 3  # a concurrent writer inserted the same listing or photo first: read it and go on


# --- tables ---------------------------------------------------------------------------------------


class ArchivePhoto(Base):
    __tablename__ = "archive_photos"
    __table_args__ = {"sqlite_autoincrement": True}  # ids never reused (see app.registry.models.Artefact)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # also the vector id in the archive's index
    sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of the listing's photo bytes
    format: Mapped[str] = mapped_column(String(10))
    width: Mapped[int] = mapped_column(Integer)  # of the original photo
    height: Mapped[int] = mapped_column(Integer)
    copy_sha256: Mapped[str] = mapped_column(String(64), index=True)  # the downsized JPEG's file name
    has_full: Mapped[bool] = mapped_column(Boolean, default=False)  # the full bytes are kept too
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    times_seen: Mapped[int] = mapped_column(Integer, default=1)


class ArchiveListing(Base):
    __tablename__ = "archive_listings"
    __table_args__ = (UniqueConstraint("platform", "listing_id", name="uq_archive_platform_listing"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(100), default="")
    listing_id: Mapped[str] = mapped_column(String(300))  # the marketplace's id of the listing
    url: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    seller: Mapped[str | None] = mapped_column(String(300))
    price: Mapped[str | None] = mapped_column(String(100))  # as the listing wrote it ("1.200,00", "120-150")
    currency: Mapped[str | None] = mapped_column(String(20))
    listed_at: Mapped[str | None] = mapped_column(String(40))  # as the listing wrote it (ISO when known)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    times_seen: Mapped[int] = mapped_column(Integer, default=1)
    source: Mapped[str] = mapped_column(String(300), default="")  # where it was last seen: a dump's name, "api"


class ArchiveSighting(Base):
    __tablename__ = "archive_sightings"

    archive_listing_id: Mapped[int] = mapped_column(
        ForeignKey("archive_listings.id", ondelete="CASCADE"), primary_key=True)
    photo_id: Mapped[int] = mapped_column(
        ForeignKey("archive_photos.id", ondelete="CASCADE"), primary_key=True, index=True)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    times_seen: Mapped[int] = mapped_column(Integer, default=1)


class ArchiveVector(Base):
    __tablename__ = "archive_vectors"
    __table_args__ = (UniqueConstraint("photo_id", "model_fingerprint", name="uq_archive_vector"),
                      Index("ix_archive_vectors_fingerprint_seq", "model_fingerprint", "id"),
                      {"sqlite_autoincrement": True})

    # The order vectors were stored in: the archive's index remembers the last one it holds and reads
    # only the newer ones when another process added some.
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    photo_id: Mapped[int] = mapped_column(ForeignKey("archive_photos.id", ondelete="CASCADE"))
    model_fingerprint: Mapped[str] = mapped_column(String(120))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little endian


class HuntPosition(Base):
    """The retro-hunt's progress per model: the last registry photo id hunted (``app.jobs.retrohunt``), in the
    database so that replicas take turns on one hunt instead of each hunting every photo again."""

    __tablename__ = "hunt_positions"

    model_fingerprint: Mapped[str] = mapped_column(String(120), primary_key=True)
    last_photo_id: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class ArchiveBlob(Base):
    """An archived photo's bytes (its downsized copy, or the full photo with ``archive_keep_full``), once per
    content, when the photo store is the database (``HM_PHOTO_STORE=database``): every replica reads them."""

    __tablename__ = "archive_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    format: Mapped[str] = mapped_column(String(10))
    data: Mapped[bytes] = mapped_column(LargeBinary)


# --- what goes in and comes out ---------------------------------------------------------------------


def _text(value: object, limit: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dt.datetime, dt.date)):
        value = value.isoformat()
    # A file name that is not UTF-8 (a folder dump's listing id, held as surrogates) is kept as \udcXX.
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8").strip()
    return text[:limit] if text else None


@dataclass(frozen=True)
class ListingFacts:
    """What a listing says about itself. Text is cut to the columns' sizes; ``listing_id`` is required."""

    listing_id: str
    platform: str = ""
    url: str | None = None
    title: str | None = None
    seller: str | None = None
    price: str | float | None = None
    currency: str | None = None
    listed_at: str | dt.date | dt.datetime | None = None
    source: str = ""  # a dump file's name, "api"

    def __post_init__(self) -> None:
        listing_id = _text(self.listing_id, 300)
        if not listing_id:
            raise ValueError("an archived listing needs its listing_id")
        object.__setattr__(self, "listing_id", listing_id)
        object.__setattr__(self, "platform", _text(self.platform, 100) or "")
        object.__setattr__(self, "source", _text(self.source, 300) or "")
        for name, limit in (("url", 4000), ("title", 2000), ("seller", 300), ("price", 100), ("currency", 20),
                            ("listed_at", 40)):
            object.__setattr__(self, name, _text(getattr(self, name), limit))

    @classmethod
    def from_fields(cls, listing_id: str, fields: dict, source: str = "") -> "ListingFacts":
        """From a scanned listing's fields (``app.jobs.scan.reader.Listing.fields``: text by name)."""
        return cls(listing_id=listing_id, platform=fields.get("platform") or "", url=fields.get("url"),
                   title=fields.get("title"), seller=fields.get("seller"), price=fields.get("price"),
                   currency=fields.get("currency"), listed_at=fields.get("listed_at"), source=source)


@dataclass(frozen=True)
class RecordedPhoto:
    photo_id: int
    new_photo: bool  # first time this photo (its bytes) is seen
    new_sighting: bool  # first time it is seen in this listing
    listing_row_id: int  # ArchiveListing.id
    vector_added: bool  # a vector for the given fingerprint was stored now


@dataclass(frozen=True)
class Sighting:
    """A listing a photo was seen in: the listing as last seen, and when the photo was seen in it."""

    listing: ArchiveListing
    first_seen: dt.datetime
    last_seen: dt.datetime
    times_seen: int


class VectorPage(NamedTuple):
    seqs: np.ndarray  # int64 (n,): ArchiveVector.id, ascending
    ids: np.ndarray  # int64 (n,): archive photo ids
    vectors: np.ndarray  # float32 (n, dim)


@dataclass
class PurgeReport:
    photos: int = 0
    listings: int = 0
    sightings: int = 0
    vectors: int = 0
    files: int = 0
    photo_ids: list[int] = field(default_factory=list)  # to remove from the archive's index


CopyBytes = bytes | Callable[[], bytes]  # the downsized JPEG, or what makes it (called only for a new photo)


def _naive_utc(when: dt.datetime | None) -> dt.datetime:
    if when is None:
        return utcnow()
    if when.tzinfo is not None:
        return when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when


def _vector_bytes(vector: np.ndarray) -> tuple[int, bytes]:
    vec = np.asarray(vector, dtype="<f4").ravel()
    if not vec.size or not np.all(np.isfinite(vec)):
        raise ValueError("an archived vector must be finite and non-empty")
    return int(vec.size), vec.tobytes()


_NO_SYNC = {"synchronize_session": False}


def _count(result) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


_PG_ARCHIVE_LOCK = 0x686D5F6172636869  # pg_advisory_xact_lock key of archive writes ("hm_archi")


def _write_lock_first(s: Session) -> None:
    """Begin the transaction with a write (that changes nothing): on SQLite the transaction then holds
    the database's write lock before it reads, so two writers recording the same listing or photo are
    serialised and neither reads what the other is about to change. PostgreSQL locks no row for such a
    write: a transaction-scoped advisory lock serialises the archive's writers there."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(select(func.pg_advisory_xact_lock(_PG_ARCHIVE_LOCK)))
        return
    s.execute(update(ArchivePhoto).where(ArchivePhoto.id == -1).values(times_seen=ArchivePhoto.times_seen),
              execution_options=_NO_SYNC)


def _batches(ids: list[T], size: int = _IN_BATCH) -> Iterator[list[T]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


_VECTORS_OF = select(ArchiveVector.photo_id, ArchiveVector.vector).where(
    ArchiveVector.model_fingerprint == bindparam("fingerprint"),
    ArchiveVector.photo_id.in_(bindparam("ids", expanding=True)))

_VECTOR_PAGE = (select(ArchiveVector.id, ArchiveVector.photo_id, ArchiveVector.vector)
                .where(ArchiveVector.model_fingerprint == bindparam("fingerprint"),
                       ArchiveVector.id > bindparam("after"))
                .order_by(ArchiveVector.id).limit(bindparam("page")))


# --- the store --------------------------------------------------------------------------------------


class ArchiveStore:
    """The archive's rows (in the registry database, through its ``sessions``) and its photos' bytes: files under
    ``root``, or with ``in_database`` (``HM_PHOTO_STORE=database``) rows of ``archive_blobs``, written and deleted
    in the transactions of the rows that name them, so that every replica reads every copy."""

    def __init__(self, sessions: sessionmaker, root: Path, in_database: bool = False):
        self.sessions = sessions
        self.files = PhotoStore(root)
        self.root = Path(root)
        # The registry's database photo store over the archive's own table: an archived copy is kept while an
        # archived photo names it (as its copy, or as its full bytes).
        self.blobs = DatabasePhotoStore(sessions, blob=ArchiveBlob, referenced=lambda: or_(
            exists().where(ArchivePhoto.copy_sha256 == ArchiveBlob.sha256),
            exists().where(ArchivePhoto.sha256 == ArchiveBlob.sha256, ArchivePhoto.has_full.is_(True)),
        )) if in_database else None
        self._write_lock_path = self.root / ".write.lock"

    def _put(self, s: Session, data: bytes, sha256: str, fmt: str) -> None:
        if self.blobs is not None:
            self.blobs.add(s, [(sha256, fmt[:10], data)])  # locked to the commit: a purge waits, then keeps it
        else:
            self.files.put(data, sha256, fmt)

    def _read(self, sha256: str, fmt: str) -> bytes:
        return self.blobs.read(sha256, fmt) if self.blobs is not None else self.files.read(sha256, fmt)

    @contextmanager
    def _file_writes(self, exclusive: bool = False):
        """Held shared from writing files until their rows commit, exclusive to delete files: a purge
        never judges a file unreferenced while a writer is between its file and its commit. In the database the
        rows' own locks do that (``DatabasePhotoStore``)."""
        if self.blobs is not None:
            yield
            return
        private_dir(self.root)
        with file_lock(self._write_lock_path, shared=not exclusive):
            yield

    # --- recording ----------------------------------------------------------------------------

    def record(self, listing: ListingFacts, photo_sha256: str, photo_bytes: bytes | None, copy_jpeg: CopyBytes,
               width: int, height: int, fmt: str, vector: np.ndarray | None = None, fingerprint: str | None = None,
               seen_at: dt.datetime | None = None) -> RecordedPhoto:
        """Record that ``listing`` showed this photo at ``seen_at`` (default now), in one transaction.

        ``photo_bytes``: the full photo, kept only when given (``archive_keep_full``); ``copy_jpeg``: the
        downsized copy, or a function making it, called only when the photo is new. A photo already
        archived keeps its copy and its vectors; a vector is stored when the photo has none of
        ``fingerprint`` yet. One call is one visit: calls with the same ``seen_at`` (the photos of one
        listing in one scan) count the listing as seen once; each call bumps the photo and the sighting
        unless it repeats their ``seen_at`` too.
        """
        if len(photo_sha256) != 64 or any(c not in "0123456789abcdef" for c in photo_sha256):
            raise ValueError("a photo is archived under the SHA-256 hex digest of its bytes")
        when = _naive_utc(seen_at)
        made: list[bytes] = []

        def copy() -> bytes:
            if not made:
                made.append(copy_jpeg() if callable(copy_jpeg) else copy_jpeg)
            return made[0]

        row = (_vector_bytes(vector) if vector is not None and fingerprint else None)
        if callable(copy_jpeg) and self.has_photo(photo_sha256) is None:
            copy()  # a new photo: make its copy before the transaction takes the write lock
        for attempt in range(_RETRIES):
            try:
                with self._file_writes(), self.sessions.begin() as s:
                    return self._record(s, listing, photo_sha256, photo_bytes, copy, width, height, fmt,
                                        row, fingerprint, when)
            except IntegrityError:
                if attempt == _RETRIES - 1:
                    raise
                log.debug("Archive: a concurrent writer recorded %s first; recording again.", photo_sha256)
        raise AssertionError("unreachable")

    def _record(self, s: Session, facts: ListingFacts, sha: str, full: bytes | None, copy: Callable[[], bytes],
                width: int, height: int, fmt: str, vector: tuple[int, bytes] | None, fingerprint: str | None,
                when: dt.datetime) -> RecordedPhoto:
        _write_lock_first(s)
        # The listing: created, or seen again (a new visit when ``when`` differs from its last one).
        # FOR UPDATE: on PostgreSQL two writers bumping one row take turns (SQLite: the lock above).
        listing = s.scalar(select(ArchiveListing).where(ArchiveListing.platform == facts.platform,
                                                        ArchiveListing.listing_id == facts.listing_id)
                           .with_for_update())
        described = {name: getattr(facts, name) for name in
                     ("url", "title", "seller", "price", "currency", "listed_at")}
        if listing is None:
            listing = ArchiveListing(platform=facts.platform, listing_id=facts.listing_id, source=facts.source,
                                     first_seen=when, last_seen=when, times_seen=1, **described)
            s.add(listing)
            s.flush()
        else:
            if when != listing.last_seen:
                listing.times_seen += 1
            listing.first_seen = min(listing.first_seen, when)
            if when >= listing.last_seen:  # the newest visit says what the listing says now
                listing.last_seen = when
                for name, value in described.items():
                    if value is not None:
                        setattr(listing, name, value)
                if facts.source:
                    listing.source = facts.source

        # The photo: stored once, its files written before the row commits.
        photo = s.scalar(select(ArchivePhoto).where(ArchivePhoto.sha256 == sha).with_for_update())
        new_photo = photo is None
        if photo is None:
            data = copy()
            copy_sha = sha256_hex(data)
            self._put(s, data, copy_sha, COPY_FORMAT)
            if full is not None:
                self._put(s, full, sha, fmt)
            photo = ArchivePhoto(sha256=sha, format=fmt[:10], width=int(width), height=int(height),
                                 copy_sha256=copy_sha, has_full=full is not None, first_seen=when, last_seen=when,
                                 times_seen=0)
            s.add(photo)
            s.flush()
        elif full is not None and not photo.has_full:
            self._put(s, full, sha, fmt)
            photo.has_full = True

        # The sighting: the photo in this listing.
        sighting = s.get(ArchiveSighting, (listing.id, photo.id), with_for_update=True)
        new_sighting = sighting is None
        if sighting is None:
            s.add(ArchiveSighting(archive_listing_id=listing.id, photo_id=photo.id, first_seen=when, last_seen=when,
                                  times_seen=1))
            bump = True
        else:
            bump = when != sighting.last_seen
            if bump:
                sighting.times_seen += 1
            sighting.first_seen = min(sighting.first_seen, when)
            sighting.last_seen = max(sighting.last_seen, when)
        if bump:
            photo.times_seen += 1
        photo.first_seen = min(photo.first_seen, when)
        photo.last_seen = max(photo.last_seen, when)

        vector_added = False
        if vector is not None and fingerprint:
            have = not new_photo and s.scalar(select(exists().where(
                ArchiveVector.photo_id == photo.id, ArchiveVector.model_fingerprint == fingerprint)))
            if not have:
                dim, blob = vector
                s.add(ArchiveVector(photo_id=photo.id, model_fingerprint=fingerprint, dim=dim, vector=blob))
                vector_added = True
        s.flush()
        return RecordedPhoto(photo.id, new_photo, new_sighting, listing.id, vector_added)

    def add_vector(self, photo_id: int, fingerprint: str, vector: np.ndarray) -> bool:
        """Store a vector of an archived photo (re-embedded from its copy after a model change); False when
        the photo is gone or already has one of this model (a photo's vector of a model never changes)."""
        dim, blob = _vector_bytes(vector)
        try:
            with self.sessions.begin() as s:
                if s.get(ArchivePhoto, photo_id) is None or self.vector_exists(photo_id, fingerprint, s):
                    return False
                s.add(ArchiveVector(photo_id=photo_id, model_fingerprint=fingerprint, dim=dim, vector=blob))
        except IntegrityError:  # a concurrent writer stored it first
            return False
        return True

    # --- reading ----------------------------------------------------------------------------------

    def has_photo(self, sha256: str) -> int | None:
        """The archived photo's id, or None."""
        with self.sessions() as s:
            return s.scalar(select(ArchivePhoto.id).where(ArchivePhoto.sha256 == sha256))

    def vector_exists(self, photo_id: int, fingerprint: str, session: Session | None = None) -> bool:
        query = select(exists().where(ArchiveVector.photo_id == photo_id,
                                      ArchiveVector.model_fingerprint == fingerprint))
        if session is not None:
            return bool(session.scalar(query))
        with self.sessions() as s:
            return bool(s.scalar(query))

    def has_listing(self, platform: str, listing_id: str) -> int | None:
        """The archived listing's row id, or None (``watch`` skips listings already archived)."""
        with self.sessions() as s:
            return s.scalar(select(ArchiveListing.id).where(ArchiveListing.platform == (platform or ""),
                                                            ArchiveListing.listing_id == str(listing_id).strip()))

    def photo(self, photo_id: int) -> ArchivePhoto | None:
        with self.sessions() as s:
            return s.get(ArchivePhoto, photo_id)

    def photos(self, photo_ids: list[int]) -> dict[int, ArchivePhoto]:
        found: dict[int, ArchivePhoto] = {}
        with self.sessions() as s:
            for batch in _batches(list(photo_ids)):
                found.update((p.id, p) for p in s.scalars(select(ArchivePhoto).where(ArchivePhoto.id.in_(batch))))
        return found

    def listing(self, listing_row_id: int) -> ArchiveListing | None:
        with self.sessions() as s:
            return s.get(ArchiveListing, listing_row_id)

    def copy_path(self, photo: ArchivePhoto) -> Path:
        return self.files.path_for(photo.copy_sha256, COPY_FORMAT)

    def copy_bytes(self, photo_id: int) -> bytes:
        """The downsized JPEG of an archived photo (KeyError when the photo is not archived)."""
        photo = self.photo(photo_id)
        if photo is None:
            raise KeyError(photo_id)
        return self._read(photo.copy_sha256, COPY_FORMAT)

    def full_bytes(self, photo_id: int) -> bytes | None:
        """The photo as the listing showed it, when kept (``archive_keep_full``)."""
        photo = self.photo(photo_id)
        if photo is None or not photo.has_full:
            return None
        return self._read(photo.sha256, photo.format)

    def listings_of(self, photo_id: int) -> list[Sighting]:
        """Every listing the photo was seen in, most recently seen first."""
        with self.sessions() as s:
            rows = s.execute(
                select(ArchiveListing, ArchiveSighting)
                .join(ArchiveSighting, ArchiveSighting.archive_listing_id == ArchiveListing.id)
                .where(ArchiveSighting.photo_id == photo_id)
                .order_by(ArchiveSighting.last_seen.desc(), ArchiveListing.id)
            ).all()
        return [Sighting(listing, sighting.first_seen, sighting.last_seen, sighting.times_seen)
                for listing, sighting in rows]

    def photos_of(self, listing_row_id: int) -> list[int]:
        with self.sessions() as s:
            return list(s.scalars(select(ArchiveSighting.photo_id)
                                  .where(ArchiveSighting.archive_listing_id == listing_row_id)
                                  .order_by(ArchiveSighting.photo_id)))

    # --- vectors ------------------------------------------------------------------------------------

    def vector_pages(self, fingerprint: str, after_seq: int = 0, page: int = PAGE) -> Iterator[VectorPage]:
        """The vectors of one model stored after ``after_seq``, oldest first, ``page`` at a time, each page
        its own short read (a build over millions does not hold a transaction open)."""
        last = after_seq
        while True:
            with self.sessions() as s:  # Core: every search of a shared index asks for the newest vectors
                rows = s.connection().execute(_VECTOR_PAGE, {"fingerprint": fingerprint, "after": last,
                                                             "page": page}).all()
            if not rows:
                return
            seqs = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            ids = np.fromiter((r[1] for r in rows), np.int64, len(rows))
            vecs = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), -1)
            yield VectorPage(seqs, ids, vecs.astype(np.float32))
            last = int(seqs[-1])
            if len(rows) < page:
                return

    def vectors(self, fingerprint: str) -> tuple[np.ndarray, np.ndarray]:
        """All vectors of one model: (photo ids int64 (N,), float32 (N, dim)), read page by page into one
        array (N x dim x 4 bytes: 2 GB at a million 512-d vectors)."""
        total = self.vector_count(fingerprint)
        ids = np.zeros(total, np.int64)
        matrix: np.ndarray | None = None
        filled = 0
        for page in self.vector_pages(fingerprint):
            if matrix is None:
                matrix = np.zeros((total, page.vectors.shape[1]), np.float32)
            take = min(len(page.ids), total - filled)  # rows stored since the count: left to the next call
            ids[filled:filled + take] = page.ids[:take]
            matrix[filled:filled + take] = page.vectors[:take]
            filled += take
            if filled == total:
                break
        if matrix is None:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return ids[:filled], matrix[:filled]

    def vectors_of(self, fingerprint: str, photo_ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of these photos for one model, those that exist: (ids, float32 (n, dim)), in no order."""
        wanted = sorted({int(i) for i in np.asarray(photo_ids, dtype=np.int64).ravel() if i >= 0})
        found_ids: list[int] = []
        blobs: list[bytes] = []
        with self.sessions() as s:
            conn = s.connection()  # Core, not the ORM: a re-ranking search reads here (0.6 ms for 100, not 1.5)
            for batch in _batches(wanted):
                for pid, blob in conn.execute(_VECTORS_OF, {"fingerprint": fingerprint, "ids": batch}):
                    found_ids.append(pid)
                    blobs.append(blob)
        if not blobs:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        vecs = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1).astype(np.float32)
        return np.asarray(found_ids, np.int64), vecs

    def vector_ids(self, fingerprint: str) -> np.ndarray:
        """Photo ids with a vector of this model, ascending (no vector read)."""
        with self.sessions() as s:  # Core: a million rows at each process's start
            rows = s.connection().execute(select(ArchiveVector.photo_id)
                                          .where(ArchiveVector.model_fingerprint == fingerprint)
                                          .order_by(ArchiveVector.photo_id))
            return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def vector_count(self, fingerprint: str) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(ArchiveVector)
                                .where(ArchiveVector.model_fingerprint == fingerprint)) or 0)

    def last_vector_seq(self, fingerprint: str) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.max(ArchiveVector.id))
                                .where(ArchiveVector.model_fingerprint == fingerprint)) or 0)

    def missing_vectors(self, fingerprint: str, limit: int | None = None) -> list[int]:
        """Archived photos without a vector of this model, ascending: re-embed them from their copies."""
        with self.sessions() as s:
            have = select(ArchiveVector.photo_id).where(ArchiveVector.model_fingerprint == fingerprint)
            query = select(ArchivePhoto.id).where(ArchivePhoto.id.not_in(have)).order_by(ArchivePhoto.id)
            return list(s.scalars(query.limit(limit) if limit else query))

    def missing_vector_count(self, fingerprint: str) -> int:
        with self.sessions() as s:
            have = select(ArchiveVector.photo_id).where(ArchiveVector.model_fingerprint == fingerprint)
            return int(s.scalar(select(func.count()).select_from(ArchivePhoto)
                                .where(ArchivePhoto.id.not_in(have))) or 0)

    def fingerprints(self) -> dict[str, int]:
        with self.sessions() as s:
            rows = s.execute(select(ArchiveVector.model_fingerprint, func.count())
                             .group_by(ArchiveVector.model_fingerprint))
            return {fp: int(n) for fp, n in rows}

    def counts(self) -> dict[str, int]:
        with self.sessions() as s:
            return {name: int(s.scalar(select(func.count()).select_from(table)) or 0) for name, table in (
                ("photos", ArchivePhoto), ("listings", ArchiveListing), ("sightings", ArchiveSighting),
                ("vectors", ArchiveVector))}

    # --- retention ----------------------------------------------------------------------------------

    def purge(self, retention_days: float, now: dt.datetime | None = None,
              keep_photo_ids: set[int] | frozenset[int] = frozenset()) -> PurgeReport:
        """Remove the photos not seen for more than ``retention_days`` (0: keep forever), except
        ``keep_photo_ids`` (photos an alert refers to), with their sightings, vectors and files, and the
        listings left with no photo. The caller removes ``report.photo_ids`` from the index."""
        report = PurgeReport()
        if retention_days <= 0:
            return report
        cutoff = _naive_utc(now) - dt.timedelta(days=retention_days)
        with self.sessions() as s:
            stale = [pid for pid in s.scalars(select(ArchivePhoto.id).where(ArchivePhoto.last_seen < cutoff)
                                              .order_by(ArchivePhoto.id)) if pid not in keep_photo_ids]
        files: set[str] = set()  # content names (sha256) whose files may have lost their last reference
        for batch in _batches(stale):
            with self.sessions.begin() as s:
                # The first statement writes: the transaction holds the write lock from here, so a photo
                # seen again before it stays, and none is seen again until the commit.
                still_stale = select(ArchivePhoto.id).where(ArchivePhoto.id.in_(batch), ArchivePhoto.last_seen < cutoff)
                report.sightings += _count(s.execute(delete(ArchiveSighting).where(
                    ArchiveSighting.photo_id.in_(still_stale)), execution_options=_NO_SYNC))
                gone = s.execute(select(ArchivePhoto.id, ArchivePhoto.sha256, ArchivePhoto.format,
                                        ArchivePhoto.copy_sha256, ArchivePhoto.has_full)
                                 .where(ArchivePhoto.id.in_(batch), ArchivePhoto.last_seen < cutoff)).all()
                ids = [row[0] for row in gone]
                if not ids:
                    continue
                report.vectors += _count(s.execute(delete(ArchiveVector).where(ArchiveVector.photo_id.in_(ids)),
                                                   execution_options=_NO_SYNC))
                report.photos += _count(s.execute(delete(ArchivePhoto).where(ArchivePhoto.id.in_(ids)),
                                                  execution_options=_NO_SYNC))
                report.photo_ids.extend(ids)
                for _, sha, fmt, copy_sha, has_full in gone:
                    files.add(f"{copy_sha}\0{COPY_FORMAT}")
                    if has_full:
                        files.add(f"{sha}\0{fmt}")
        with self.sessions.begin() as s:
            report.listings = _count(s.execute(
                delete(ArchiveListing).where(
                    ArchiveListing.last_seen < cutoff,
                    ~exists().where(ArchiveSighting.archive_listing_id == ArchiveListing.id)),
                execution_options=_NO_SYNC))
        if files:
            report.files = self._delete_unreferenced(files)
        return report

    def _delete_unreferenced(self, names: set[str]) -> int:
        if self.blobs is not None:
            removed = 0
            for batch in _batches(sorted({name.split("\0")[0] for name in names})):
                with self.sessions.begin() as s:
                    removed += len(self.blobs.delete_unused(s, batch))
            return removed
        removed = 0
        with self._file_writes(exclusive=True), self.sessions() as s:
            for name in sorted(names):
                sha, fmt = name.split("\0")
                used = s.scalar(select(exists().where(ArchivePhoto.copy_sha256 == sha))) or (
                    s.scalar(select(exists().where(ArchivePhoto.sha256 == sha, ArchivePhoto.has_full.is_(True)))))
                path = self.files.path_for(sha, fmt)
                if not used and path.exists():
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed
