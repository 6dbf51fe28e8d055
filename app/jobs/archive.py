"""ListingArchive: the listings archive as scans, monitor searches and retro-hunts use it.

It ties the archive's rows and files (``app.registry.archive.ArchiveStore``, in the registry database
and ``<data_dir>/archive/``) to its index (``app.pipeline.archive_index.SharedArchiveIndex``,
``<data_dir>/archive.faiss``), and makes the downsized copy of each new photo (longest side
``archive_copy_px``, JPEG quality 85, no metadata).

Several processes may use one archive: the rows are written in transactions, the index is shared
through its files (a process reads the vectors other processes stored since the save it holds). A
scan's decode workers do not write: they hand photos to the scan's main process, whose
``record_listing`` calls are the single writer.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import sessionmaker

from app.core.config import Settings
from app.core.db import utcnow
from app.pipeline.archive_index import SAVE_EVERY, ArchiveIndex, SharedArchiveIndex
from app.pipeline.decode import DecodedImage, thumbnail_jpeg
from app.registry.archive import ArchiveStore, ListingFacts, PurgeReport, RecordedPhoto, Sighting

if TYPE_CHECKING:
    from app.service import MatchingService

log = logging.getLogger(__name__)

COPY_QUALITY = 85


@dataclass
class ListingPhoto:
    """One photo of a listing, as a scan or a search has it: decoded, and embedded when it could be."""

    decoded: DecodedImage
    vector: np.ndarray | None
    data: bytes | None = None  # the photo's bytes: kept only with archive_keep_full


@dataclass(frozen=True)
class ArchiveHit:
    photo_id: int  # ArchivePhoto.id
    score: float  # cosine


class ListingArchive:
    def __init__(self, settings: Settings, sessions: sessionmaker, fingerprint: str, dim: int,
                 save_every: int = SAVE_EVERY):
        self.settings = settings
        self.fingerprint = fingerprint
        self.dim = dim
        self.store = ArchiveStore(sessions, settings.data_dir / "archive",
                                  in_database=settings.photo_store == "database")
        self.index = SharedArchiveIndex(settings.data_dir, self.store, fingerprint, dim,
                                        ann_min_vectors=settings.archive_ann_min_vectors, save_every=save_every)

    @classmethod
    def for_service(cls, service: "MatchingService", save_every: int = SAVE_EVERY) -> "ListingArchive":
        """The archive of a service's data directory, for its active model."""
        return cls(service.settings, service.store.sessions, service.fingerprint, service.encoder.dim, save_every)

    @property
    def enabled(self) -> bool:
        return self.settings.archive

    # --- recording ------------------------------------------------------------------------------

    def downsized_copy(self, decoded: DecodedImage) -> bytes:
        """The copy kept of a listing photo: longest side at most ``archive_copy_px``, JPEG q85, no metadata."""
        return thumbnail_jpeg(decoded.image, self.settings.archive_copy_px, COPY_QUALITY)

    def record_listing_photo(self, listing: ListingFacts, decoded: DecodedImage, vector: np.ndarray | None,
                             fingerprint: str | None = None, data: bytes | None = None, source: str | None = None,
                             seen_at: dt.datetime | None = None, sync_index: bool = True) -> RecordedPhoto:
        """Record one photo of a listing (``ArchiveStore.record``) and add its vector to the index.

        ``fingerprint`` defaults to the archive's model; a vector of another model is stored but not
        indexed here. ``data``, the photo's bytes, is kept only when ``archive_keep_full`` is on.
        """
        if source is not None:
            listing = replace(listing, source=source)
        fingerprint = fingerprint or self.fingerprint
        if vector is not None:
            vector = np.asarray(vector, dtype=np.float32).ravel()
            norm = float(np.linalg.norm(vector))
            vector = vector / norm if norm > 0 else None
        recorded = self.store.record(
            listing, decoded.sha256, data if self.settings.archive_keep_full else None,
            lambda: self.downsized_copy(decoded), decoded.width, decoded.height, decoded.format,
            vector=vector, fingerprint=fingerprint, seen_at=seen_at)
        if sync_index and recorded.vector_added and fingerprint == self.fingerprint:
            self.index.index()  # reads the new vector in (and saves every save_every vectors)
        return recorded

    def record_listing(self, listing: ListingFacts, photos: Sequence[ListingPhoto], source: str | None = None,
                       seen_at: dt.datetime | None = None) -> list[RecordedPhoto]:
        """Record one visit of a listing with its photos: the listing counts as seen once."""
        when = seen_at or utcnow()
        recorded = [self.record_listing_photo(listing, p.decoded, p.vector, data=p.data, source=source,
                                              seen_at=when, sync_index=False) for p in photos]
        if any(r.vector_added for r in recorded):
            self.index.index()
        return recorded

    def known_listing(self, platform: str, listing_id: str) -> bool:
        return self.store.has_listing(platform, listing_id) is not None

    # --- searching --------------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> list[list[ArchiveHit]]:
        """For each query vector (unit, of the archive's model), its ``k`` nearest archived photos, best first."""
        queries = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if not len(queries) or k <= 0:
            return [[] for _ in queries]
        scores, ids = self.index.search(queries, k)
        return [[ArchiveHit(int(i), float(s)) for s, i in zip(row_scores, row_ids) if i >= 0]
                for row_scores, row_ids in zip(scores, ids)]

    def listings_of(self, photo_id: int) -> list[Sighting]:
        return self.store.listings_of(photo_id)

    def copy_bytes(self, photo_id: int) -> bytes:
        return self.store.copy_bytes(photo_id)

    # --- upkeep ----------------------------------------------------------------------------------

    def purge(self, now: dt.datetime | None = None, keep_photo_ids: set[int] | frozenset[int] = frozenset()
              ) -> PurgeReport:
        """Apply ``archive_retention_days``; the purged photos leave the index too."""
        report = self.store.purge(self.settings.archive_retention_days, now=now, keep_photo_ids=keep_photo_ids)
        if report.photo_ids:
            self.index.remove(report.photo_ids)
            log.info("Archive purge: %d photos, %d listings, %d files removed.", report.photos, report.listings,
                     report.files)
        return report

    def rebuild_index(self) -> ArchiveIndex:
        """Build the index again from the stored vectors of the archive's model."""
        return self.index.rebuild()

    def status(self) -> dict:
        index = self.index.index()
        manifest = index.manifest()
        return {"counts": self.store.counts(), "fingerprint": self.fingerprint, "index": {
            "kind": manifest.kind, "count": manifest.count, "version": manifest.version, "nprobe": manifest.nprobe,
            "rerank": manifest.rerank, "recall_at_10": manifest.recall},
            "missing_vectors": self.store.missing_vector_count(self.fingerprint)}

    def close(self) -> None:
        """Save the index when vectors were added since its last save."""
        self.index.close()
