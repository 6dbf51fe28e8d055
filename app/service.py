"""MatchingService: the one object the API, the CLI, scans and the evaluator share.

It owns the life cycle (model, registry, index), registration and the index; searching is
``app.pipeline.search.PhotoSearch``, which it holds and delegates to.
Registration: decode and embed first (no lock, no transaction), then one database transaction for
rows and vectors, then the index is updated and saved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from app.core.config import Settings
from app.core.errors import AppError
from app.core.files import private_data_dir
from app.embedding import ImageEncoder, create_encoder
from app.pipeline.calibrate import Calibration
from app.pipeline.decode import DecodedImage
from app.pipeline.regions import Box, crop, object_box, propose_regions
from app.pipeline.retrieve import SharedIndex, VectorIndex
from app.pipeline.search import PhotoSearch
from app.pipeline.signature import analyse_photo
from app.registry.changes import INDEX_REBUILT, PHOTOS_ADDED, PHOTOS_REMOVED, Change
from app.registry.models import Artefact, Photo, object_fingerprint
from app.registry.store import ArtefactFilter, NewPhoto, RegistryStore
from app.schemas import ArtefactCreate, ArtefactUpdate, IndexRebuildReport, IndexStatus, ModelInfo, SearchResponse

log = logging.getLogger(__name__)

Progress = Callable[[int], Any]  # called with how many items were just done


@dataclass
class PhotoInput:
    data: bytes
    view: str | None = None
    label: str = ""  # file name or row reference, for error messages


class MatchingService:
    def __init__(self, settings: Settings, encoder: ImageEncoder | None = None):
        self.settings = settings
        private_data_dir(settings.data_dir)
        self.store = RegistryStore(settings.db_url, settings.data_dir / "photos", photo_store=settings.photo_store)
        self.encoder = encoder or create_encoder(settings)
        self.device = self.encoder.device
        self.shared_index = SharedIndex(settings.data_dir, ann_min_vectors=settings.index_ann_min_vectors)
        self.searcher = PhotoSearch(settings, self.store, self.encoder, self.shared_index.get)
        # Told the ids of photos this process registered, after they are indexed (the server's retro-hunt).
        self.photo_listeners: list[Callable[[list[int]], object]] = []
        self.change_position = 0  # the change feed's position the index is known to include (set by start)

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> "MatchingService":
        """Load the model, remove photo files an interrupted write left, make the index agree with the database."""
        self.encoder.load()
        self.store.remove_orphan_files()
        # Read before reconciling: a follower (app.jobs.follow) applies every change from here on, so one committed
        # while the index is built is applied again (harmless), never missed.
        self.change_position = self.store.last_change_seq()
        self.reconcile_index()
        return self

    def close(self) -> None:
        self.store.close()

    @property
    def fingerprint(self) -> str:
        return self.encoder.fingerprint.id

    @property
    def calibration(self) -> Calibration:
        return self.searcher.calibration

    def model_info(self) -> ModelInfo:
        return self.searcher.model_info()

    def decode(self, data: bytes) -> DecodedImage:
        return self.searcher.decode(data)

    @property
    def index(self) -> VectorIndex | None:
        """The newest saved index (another worker or the CLI may have changed it)."""
        return self.shared_index.get()

    def reconcile_index(self) -> VectorIndex | None:
        """Load the saved index; rebuild it from stored vectors when missing or out of step."""
        active = self.fingerprint

        def reconcile(saved: VectorIndex | None) -> VectorIndex | None:
            if saved is not None and saved.fingerprint != active:
                log.warning("Index was built with %s, active model is %s: searches are refused until rebuilt.",
                            saved.fingerprint, active)
                return None
            stored = self.store.fingerprints()
            if saved is None and not stored.get(active) and stored:
                # Vectors exist only for another model: rebuild that model's index, refuse queries.
                other = max(stored, key=stored.__getitem__)
                ids, vecs = self.store.vectors(other)
                return VectorIndex.build(other, ids, vecs, vecs.shape[1],
                                         ann_min_vectors=self.settings.index_ann_min_vectors)
            if saved is not None and np.array_equal(np.sort(saved.ids()), self.store.vector_ids(active)):
                return None  # the usual start: nothing to rebuild, no vector read
            ids, vecs = self.store.vectors(active)
            if saved is not None:
                log.warning("Index disagrees with the registry (%d vs %d vectors): rebuilding.", saved.count, len(ids))
            return VectorIndex.build(active, ids, vecs, self.encoder.dim, _next_version(saved),
                                     ann_min_vectors=self.settings.index_ann_min_vectors)

        index = self.shared_index.modify(reconcile)
        missing = len(self.store.photos_missing_vectors(active))
        if missing and index is not None and index.fingerprint == active:
            log.warning("%d photos have no vector for %s: run `heritage-match index rebuild --reembed`.",
                        missing, active)
        return index

    def rebuild_index(self, reembed: bool = False, progress: Progress | None = None) -> IndexRebuildReport:
        """Rebuild the index for the active model; with ``reembed`` first embed photos lacking vectors."""
        active = self.fingerprint
        embedded = failed = 0
        if reembed:
            todo = self.store.photos_missing_vectors(active)
            for start in range(0, len(todo), self.encoder.batch_size):
                chunk = todo[start : start + self.encoder.batch_size]
                images, ok = [], []
                for photo in chunk:
                    try:
                        images.append(self.decode(self.store.photos.read(photo.sha256, photo.format)).image)
                        ok.append(photo.id)
                    except (AppError, OSError) as exc:
                        failed += 1
                        log.error("Photo %d cannot be re-embedded: %s", photo.id, exc)
                if images:
                    # Both views from one decode: after a model switch every photo lacks both.
                    frames, objects = self._embed_views(images, [propose_regions(im) for im in images])
                    embedded += len(self.store.put_vectors(active, list(zip(ok, frames))))
                    self.store.put_object_vectors(active, list(zip(ok, objects)))
                if progress:
                    progress(len(chunk))
            # Photos whose frame was embedded before the object views existed; an unreadable one was counted above.
            self._embed_object_views(progress, tried={p.id for p in todo})

        def rebuild(saved: VectorIndex | None) -> VectorIndex:
            ids, vecs = self.store.vectors(active)
            return VectorIndex.build(active, ids, vecs, self.encoder.dim, _next_version(saved),
                                     ann_min_vectors=self.settings.index_ann_min_vectors)

        index = self.shared_index.modify(rebuild)
        assert index is not None  # rebuild always returns an index
        self.store.record_index_rebuilt(active)  # other replicas make theirs agree with the stored vectors too
        missing = len(self.store.photos_missing_vectors(active))
        return IndexRebuildReport(fingerprint=active, vectors=index.count, embedded=embedded, failed=failed,
                                  missing=missing, version=index.version)

    def photos_missing_object_views(self) -> list[Photo]:
        return self.store.photos_missing_vectors(object_fingerprint(self.fingerprint))

    def _embed_object_views(self, progress: Progress | None = None,
                            tried: frozenset[int] | set[int] = frozenset()) -> None:
        """Object views of photos registered before they existed (``tried``: photos not to read again)."""
        todo = [p for p in self.photos_missing_object_views() if p.id not in tried]
        for start in range(0, len(todo), self.encoder.batch_size):
            chunk = todo[start : start + self.encoder.batch_size]
            images, proposals, ok = [], [], []
            for photo in chunk:
                try:
                    image = self.decode(self.store.photos.read(photo.sha256, photo.format)).image
                except (AppError, OSError) as exc:
                    log.error("Photo %d has no object view: %s", photo.id, exc)
                    continue
                images.append(image)
                proposals.append(propose_regions(image))
                ok.append(photo.id)
            _, objects = self._embed_views(images, proposals)
            if ok:
                self.store.put_object_vectors(self.fingerprint, list(zip(ok, objects)))
            if progress:
                progress(len(chunk))

    def index_status(self) -> IndexStatus:
        idx = self.index
        if idx is None:
            return IndexStatus(loaded=False)
        return IndexStatus(loaded=True, fingerprint=idx.fingerprint, count=idx.count, version=idx.version,
                           matches_model=idx.fingerprint == self.fingerprint)

    def indexed_photo_ids(self, photo_ids: list[int]) -> set[int]:
        """Photos that searches with the active model can find."""
        idx = self.index
        if idx is None or idx.fingerprint != self.fingerprint:
            return set()
        return self.store.indexed_photo_ids(self.fingerprint, photo_ids)

    # --- registration -----------------------------------------------------------------------------

    def prepare_photos(self, inputs: list[PhotoInput]) -> list[NewPhoto]:
        """Decode and embed photos; raises on the first bad one (with its label)."""
        decoded = []
        for item in inputs:
            try:
                decoded.append(self.decode(item.data))
            except AppError as exc:
                if item.label:
                    exc.label = item.label  # the web says the file's name beside a translated message
                    exc.message = f"{item.label}: {exc.message}"
                    exc.args = (exc.message,)
                raise
        analyses = [analyse_photo(d.image, proposals=True) for d in decoded]
        frames, objects = self._embed_views([d.image for d in decoded], [a.proposals or [] for a in analyses])
        return [
            NewPhoto(data=item.data, sha256=d.sha256, format=d.format, width=d.width, height=d.height,
                     vector=vec, view=item.view, signature=a.signature, object_vector=obj)
            for item, d, a, vec, obj in zip(inputs, decoded, analyses, frames, objects)
        ]

    def _embed_views(self, images: list[Image.Image], proposals: list[list[Box]]) -> tuple[list, list]:
        """Each photo's whole frame and its object's box alone (an empty vector where the object fills
        the frame), in one batch. Searches compare the query's regions with both (``PhotoSearch``)."""
        boxes = [object_box(im, p) for im, p in zip(images, proposals)]
        crops = [crop(im, b) for im, b in zip(images, boxes) if b is not None]
        if not images:
            return [], []
        vectors = self.encoder.embed(images + crops)
        frames, rest = list(vectors[:len(images)]), iter(vectors[len(images):])
        objects = [next(rest) if b is not None else np.zeros(0, np.float32) for b in boxes]
        return frames, objects

    def register_artefact(self, fields: dict, photos: list[PhotoInput] | list[NewPhoto]) -> Artefact:
        """Validate the record, then store it with its photos in one transaction and index them."""
        fields = ArtefactCreate.model_validate(fields).model_dump()
        prepared = self._prepared(photos)
        artefact = self.store.create_artefact(fields, prepared, self.fingerprint)
        self._index_photos(artefact.photos, prepared)
        return artefact

    def add_photos(self, artefact_id: int, photos: list[PhotoInput] | list[NewPhoto]) -> list[Photo]:
        prepared = self._prepared(photos)
        stored = self.store.add_photos(artefact_id, prepared, self.fingerprint)
        self._index_photos(stored, prepared)
        return stored

    def _prepared(self, photos) -> list[NewPhoto]:
        if photos and isinstance(photos[0], PhotoInput):
            return self.prepare_photos(photos)
        return list(photos)

    def _index_photos(self, stored: list[Photo], prepared: list[NewPhoto]) -> None:
        by_sha = {p.sha256: p.vector for p in prepared if p.vector is not None}
        pairs = [(p.id, by_sha[p.sha256]) for p in stored if p.sha256 in by_sha]
        if not pairs:
            return
        active = self.fingerprint

        def add(index: VectorIndex | None) -> VectorIndex | None:
            if index is None or index.fingerprint != active:
                return None  # stale index: the vectors are stored, `index rebuild` picks them up
            # Another replica may have deleted the artefact since our commit, and this process's follower removed
            # its photos from the index already: adding them now would leave them there for good.
            alive = self.store.photo_owner_map([pid for pid, _ in pairs])
            kept = [(pid, vec) for pid, vec in pairs if pid in alive]
            if not kept:
                return None
            index.add(np.array([i for i, _ in kept]), np.stack([v for _, v in kept]))
            return index

        self.shared_index.modify(add)
        for listener in self.photo_listeners:
            listener([pid for pid, _ in pairs])

    def apply_changes(self, changes: list[Change]) -> None:
        """Make the index include registry changes, whichever process made them (``app.jobs.follow``). Each is
        idempotent, so one this process made itself, or applied before, changes nothing."""
        active = self.fingerprint
        for change in changes:
            if change.kind == INDEX_REBUILT and change.fingerprint == active:
                self.reconcile_index()  # rebuilds only when the index and the stored vectors differ
            elif change.kind == PHOTOS_ADDED and change.fingerprint == active:
                self.shared_index.modify(partial(self._add_stored, change.photo_ids))
            elif change.kind == PHOTOS_REMOVED:
                self.shared_index.modify(partial(self._remove_gone, change.photo_ids))
            self.change_position = max(self.change_position, change.seq)

    def _add_stored(self, photo_ids: list[int], index: VectorIndex | None) -> VectorIndex | None:
        """Add the stored vectors of photos the index lacks (None: nothing to add)."""
        if index is None or index.fingerprint != self.fingerprint:
            return None
        todo = np.setdiff1d(np.asarray(photo_ids, np.int64), index.ids())
        vectors = self.store.vectors_of(self.fingerprint, [int(i) for i in todo]) if len(todo) else {}
        if not vectors:
            return None  # already indexed, or deleted since (their vectors went with them)
        index.add(np.fromiter(vectors, np.int64, len(vectors)), np.stack(list(vectors.values())))
        return index

    def _remove_gone(self, photo_ids: list[int], index: VectorIndex | None) -> VectorIndex | None:
        """Remove photos no row has any more (ids are never reused, but a registry made before that may)."""
        if index is None:
            return None
        reused = self.store.photo_owner_map(photo_ids)
        return index if index.remove([pid for pid in photo_ids if pid not in reused]) else None

    def update_artefact(self, artefact_id: int, changes: dict) -> Artefact:
        changes = ArtefactUpdate.model_validate(changes).model_dump(exclude_unset=True)
        return self.store.update_artefact(artefact_id, changes)

    def delete_artefact(self, artefact_id: int) -> None:
        photo_ids = self.store.delete_artefact(artefact_id)
        # Only ids no photo row has now: in a registry made before ids stopped being reused, another
        # worker may have given a deleted id to its new photo and indexed it since our commit.
        self.shared_index.modify(partial(self._remove_gone, photo_ids))

    def list_artefacts(self, flt: ArtefactFilter, offset: int, limit: int):
        return self.store.list_artefacts(flt, offset, limit)

    # --- search -----------------------------------------------------------------------------------

    def check_index(self) -> VectorIndex:
        return self.searcher.check_index()

    def search(self, data: bytes, top_k: int | None = None) -> SearchResponse:
        return self.searcher.search(data, top_k)

    def search_images(self, decoded: list[DecodedImage], top_k: int | None = None,
                      started: float | None = None,
                      frame_vectors: list[np.ndarray | None] | None = None) -> list[SearchResponse]:
        return self.searcher.search_images(decoded, top_k, started, frame_vectors)

    def backfill_signatures(self, photos: list[Photo], progress: Progress | None = None) -> int:
        return self.searcher.backfill_signatures(photos, progress)


def _next_version(index: VectorIndex | None) -> int:
    return index.version + 1 if index is not None else 1
