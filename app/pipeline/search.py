"""The search: one photo (or a batch) from bytes to ranked, judged candidates.

The stages run in the order of this package's modules: decode -> signature (a perceptual hash: exact
re-use of a registry photo ends here) -> regions -> embed -> retrieve -> match (aggregate per
artefact, verify colour and geometry) -> calibrate (score and verdict) -> response. The API, scans
and evaluate all end in ``PhotoSearch.search_images``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import numpy as np
from PIL import Image

from app.core.config import Settings
from app.core.errors import AppError, IndexModelMismatch
from app.embedding import ImageEncoder
from app.pipeline.calibrate import Calibration, Evidence, data_calibration_path, load_calibration
from app.pipeline.decode import DecodedImage, decode_image, working_side
from app.pipeline.decode_limits import DecodeLimits
from app.pipeline.features import GeometryResult, LocalFeatures, extract_features
from app.pipeline.match import (
    Candidate,
    Judged,
    PhotoEvidence,
    aggregate_by_artefact,
    gather_evidence,
    judge,
    photos_to_check,
    surfaces_to_compare,
)
from app.pipeline.regions import Box, crop, full_frame, propose_regions
from app.pipeline.retrieve import VectorIndex
from app.pipeline.signature import PhotoAnalysis, VisualSignature, analyse_photo, colours_from_bytes, hamming
from app.pipeline.surface import SURFACE_SIDE, QueryPyramid, compare_surface
from app.pipeline.verdict import MIN_INLIERS, evidence_line, surface_agrees
from app.registry.models import ArtefactStatus, Photo, object_fingerprint
from app.registry.store import RegistryStore
from app.schemas import MatchEvidence, ModelInfo, QueryInfo, Region, SearchResponse, SearchResult, photo_url

log = logging.getLogger(__name__)

# How many photo hits to pull per requested artefact: an artefact may have several photos.
HITS_PER_RESULT = 10
MIN_HITS = 50
# Candidates that get colour and geometric verification; the rest keep their embedding evidence.
VERIFIED_CANDIDATES = 32
# Exact re-use: perceptual hashes this close (of 64 bits) and colours this alike are the same picture.
REUSE_MAX_BITS = 6
REUSE_MIN_COLOUR = 0.85
# How often a search looks for a calibration newly written into the data directory (one stat call).
CALIBRATION_RECHECK_S = 5.0


class PhotoSearch:
    """Searches the registry (``store``) through the newest index (``index()``) with ``encoder``."""

    def __init__(self, settings: Settings, store: RegistryStore, encoder: ImageEncoder,
                 index: Callable[[], VectorIndex | None]):
        self.settings = settings
        self.store = store
        self.encoder = encoder
        self.index = index
        self._decode_limits = DecodeLimits.from_settings(settings)
        self._calibration: Calibration | None = None
        self._calibration_stamp: tuple[int, int] | None = None
        self._calibration_checked = 0.0
        self._hashes: tuple[tuple, np.ndarray, np.ndarray] | None = None

    @property
    def fingerprint(self) -> str:
        return self.encoder.fingerprint.id

    @property
    def calibration(self) -> Calibration:
        """The calibration in force; one that ``heritage-match calibrate`` writes into the data
        directory is taken up within ``CALIBRATION_RECHECK_S`` seconds, without a restart."""
        now = time.monotonic()
        if self._calibration is not None and now - self._calibration_checked >= CALIBRATION_RECHECK_S:
            self._calibration_checked = now
            if self._data_calibration_stamp() != self._calibration_stamp:
                self._calibration = None
        if self._calibration is None:
            fp = self.encoder.fingerprint
            self._calibration_stamp = self._data_calibration_stamp()
            self._calibration_checked = now
            cal = load_calibration(fp, self.encoder.match_threshold, self.encoder.possible_threshold,
                                   self.settings.data_dir)
            self._calibration = cal.with_thresholds(self.settings.match_threshold, self.settings.possible_threshold)
        return self._calibration

    def _data_calibration_stamp(self) -> tuple[int, int] | None:
        try:
            st = data_calibration_path(self.settings.data_dir, self.encoder.fingerprint.name).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def model_info(self) -> ModelInfo:
        fp = self.encoder.fingerprint
        return ModelInfo(name=fp.name, fingerprint=fp.id, dim=fp.dim, device=str(self.encoder.device),
                         calibrated=self.calibration.calibrated, calibration=self.calibration.describe())

    def decode(self, data: bytes) -> DecodedImage:
        """Decode for a search: JPEGs at reduced scale (``decode.working_side`` of the model input)."""
        return decode_image(data, limits=self._decode_limits,
                            min_side=working_side(self.encoder.preprocessing.size))

    def check_index(self) -> VectorIndex:
        idx = self.index()
        if idx is None:
            raise AppError("The index is not loaded yet.", code="not_ready", status_code=503)
        if idx.fingerprint != self.fingerprint:
            have_all = not self.store.photos_missing_vectors(self.fingerprint)
            fix = "heritage-match index rebuild" if have_all else "heritage-match index rebuild --reembed"
            raise IndexModelMismatch(
                f"The index was built with model {idx.fingerprint} but the active model is {self.fingerprint}. "
                f"Run `{fix}` to index the registry with the active model, or set HM_MODEL back."
            )
        return idx

    def search(self, data: bytes, top_k: int | None = None) -> SearchResponse:
        """One uploaded photo: decode, then the same path as a batch of one."""
        t0 = time.perf_counter()
        self.check_index()
        decoded = self.decode(data)
        return self.search_images([decoded], top_k, started=t0)[0]

    def search_images(self, decoded: list[DecodedImage], top_k: int | None = None,
                      started: float | None = None,
                      frame_vectors: list[np.ndarray | None] | None = None) -> list[SearchResponse]:
        """Search already decoded photos in one batch (the API, scans and evaluate all end here).

        ``frame_vectors``, when given, receives each photo's whole-frame vector (None for a re-used
        registry photo, which is answered before any embedding): the listings archive keeps them.
        """
        t0 = started if started is not None else time.perf_counter()
        idx = self.check_index()
        if not decoded:
            return []
        k = top_k or self.settings.top_k
        analyses = [d.analysis or analyse_photo(d.image, self.settings.region_proposals, features=False)
                    for d in decoded]
        signatures = [a.signature for a in analyses]
        judged: list[list[Judged] | None] = [self._exact_reuse(sig, k, d.image) or None
                                             for sig, d in zip(signatures, decoded)]
        regions = {i: self._regions(decoded[i], analyses[i]) for i, j in enumerate(judged) if j is None}
        crops = [crop(decoded[i].image, box) if n else decoded[i].image
                 for i, boxes in regions.items() for n, box in enumerate(boxes)]
        vectors = self.encoder.embed(crops) if crops else np.zeros((0, self.encoder.dim), np.float32)
        start = 0
        for i, boxes in regions.items():
            # Keypoints only now: a re-used registry photo never needs them. (Extracting them in a
            # thread beside the embedding was slower: 180 ms against 145 ms per 12 MP query, as
            # SIFT and the model's threads fought over 2 cores.)
            if signatures[i].features is None:
                signatures[i].features = extract_features(decoded[i].image)
            judged[i] = self._search_regions(vectors[start:start + len(boxes)], boxes, signatures[i], k, idx,
                                             decoded[i].image)
            start += len(boxes)
        if frame_vectors is not None:
            starts, at = {}, 0
            for i, boxes in regions.items():
                starts[i], at = at, at + len(boxes)
            frame_vectors[:] = [vectors[starts[i]] if i in starts else None for i in range(len(decoded))]
        model = self.model_info()
        return [
            SearchResponse(
                model=model, index_version=idx.version,
                query=QueryInfo(sha256=d.sha256, width=d.width, height=d.height, format=d.format),
                results=self._present(cast("list[Judged]", j), d),  # every None was searched above
                took_ms=round((time.perf_counter() - t0) * 1000, 2),
            )
            for d, j in zip(decoded, judged)
        ]

    def _regions(self, decoded: DecodedImage, analysis: PhotoAnalysis) -> list[Box]:
        """The whole frame first, then object proposals (several objects, clutter)."""
        frame = full_frame(decoded.image)
        if not self.settings.region_proposals:
            return [frame]
        if analysis.proposals is not None:
            return [frame] + analysis.proposals
        return [frame] + propose_regions(decoded.image)

    def _search_regions(self, vectors: np.ndarray, boxes: list[Box], signature: VisualSignature, top_k: int,
                        idx: VectorIndex, image: Image.Image) -> list[Judged]:
        """Search every region, merge per artefact, verify the best candidates, score, rank."""
        wanted = max(top_k, VERIFIED_CANDIDATES)
        scores, ids = idx.search(vectors, max(MIN_HITS, wanted * HITS_PER_RESULT))
        region_of = np.repeat(np.arange(len(boxes)), ids.shape[1])
        owner = self.store.photo_owner_map(sorted({int(i) for i in ids.ravel() if i >= 0}))
        candidates = aggregate_by_artefact(scores.ravel(), ids.ravel(), owner, wanted, region_of)
        candidates = self._compare_object_views(candidates, vectors)
        photo_ids = sorted({p for checked in photos_to_check(candidates, VERIFIED_CANDIDATES) for p in checked})
        stored = self.photo_evidence(photo_ids)
        evidence = gather_evidence(signature, candidates, stored, self.calibration, VERIFIED_CANDIDATES)
        evidence = self._compare_surfaces(image, signature, evidence, stored)
        return judge(candidates, evidence, self.calibration, [b.as_tuple() for b in boxes])[:top_k]

    def _compare_object_views(self, candidates: list[Candidate], vectors: np.ndarray) -> list[Candidate]:
        """The query's regions against the candidates' registry photos' object views (each photo's
        object box embedded alone, ``MatchingService.prepare_photos``): an object seen from another
        side, or on another backdrop, is closer box to box than frame to frame. A candidate's cosine
        is its best over both views."""
        photo_ids = sorted({p for c in candidates for p in (c.photo_ids or (c.photo_id,))})
        stored = self.store.vectors_of(object_fingerprint(self.fingerprint), photo_ids)
        views = {pid: v for pid, v in stored.items() if v.shape == (vectors.shape[1],)}  # empty: fills the frame
        if not views:
            return candidates
        out = []
        for c in candidates:
            best = c
            for pid in c.photo_ids or (c.photo_id,):
                if pid in views:
                    sims = vectors @ views[pid]
                    region = int(np.argmax(sims))
                    if float(sims[region]) > best.score:
                        best = replace(c, photo_id=pid, score=float(sims[region]), region=region)
            out.append(best)
        return out

    def _compare_surfaces(self, image: Image.Image, signature: VisualSignature,
                          evidence: list[tuple[Evidence, int, GeometryResult]],
                          stored: dict[int, PhotoEvidence]) -> list[tuple[Evidence, int, GeometryResult]]:
        """Aligned-surface agreement for the candidates whose geometry could make them a match."""
        chosen = surfaces_to_compare(evidence, MIN_INLIERS)
        if not chosen:
            return evidence
        assert signature.features is not None
        photos = {p.id: p for p in self.store.photos_by_ids([evidence[i][1] for i in chosen])}
        pyramid = QueryPyramid(image, signature.features.size)
        out = list(evidence)
        for i in chosen:
            ev, pid, geometry = evidence[i]
            photo, ref = photos.get(pid), stored.get(pid)
            if photo is None or ref is None or geometry.homography is None:
                continue
            reference = self._surface_reference(photo)
            if reference is None:
                continue
            s = compare_surface(pyramid, reference, geometry.homography, signature.features.size,
                                ref.features.size, ref.features.points)
            out[i] = (replace(ev, surface=s.agreement, surface_cells=s.cells), pid, geometry)
        return out

    def _surface_reference(self, photo: Photo) -> Image.Image | None:
        """A registry photo decoded small (JPEG DCT scaling) for the surface comparison."""
        try:
            data = self.store.photos.read(photo.sha256, photo.format)
            return decode_image(data, limits=self._decode_limits, min_side=2 * SURFACE_SIDE).image
        except (AppError, OSError) as exc:  # a missing photo file costs this check, not the search
            log.error("Photo %d cannot be read for the surface check: %s", photo.id, exc)
            return None

    def photo_evidence(self, photo_ids: list[int]) -> dict[int, PhotoEvidence]:
        """Stored signatures of registry photos; photos registered before signatures existed get theirs now."""
        rows = self.store.signatures(photo_ids)
        missing = [pid for pid in photo_ids if pid not in rows]
        if missing:
            self.backfill_signatures(self.store.photos_by_ids(missing))
            rows = self.store.signatures(photo_ids)
        out = {}
        for pid, r in rows.items():
            colour, object_colour = colours_from_bytes(r.colour)
            out[pid] = PhotoEvidence(colour, LocalFeatures.from_bytes(r.features), object_colour)
        return out

    def backfill_signatures(self, photos: list[Photo], progress: Callable[[int], Any] | None = None) -> int:
        """Compute and store signatures for these photos; a photo that cannot be read is skipped."""
        done = []
        for photo in photos:
            try:
                image = self.decode(self.store.photos.read(photo.sha256, photo.format)).image
                done.append((photo.id, analyse_photo(image, proposals=False).signature))
            except (AppError, OSError) as exc:
                log.error("Photo %d has no signature: %s", photo.id, exc)
            if progress:
                progress(1)
        if done:
            self.store.put_signatures(done)
        return len(done)

    def _exact_reuse(self, signature: VisualSignature, top_k: int, image: Image.Image) -> list[Judged]:
        """Registry photos this query re-uses (resized, recompressed, watermarked): no neural work needed.

        A near-identical hash is not enough: a twin made from a registry photo by altering one
        region (another label, a repainted patch) keeps most of the hash. The two pictures must
        also agree over the object's surface, compared as they are (no alignment needed).
        """
        bits = bin(signature.phash & (2**64 - 1)).count("1")
        if not 8 <= bits <= 56:  # a near-uniform picture's hash says little
            return []
        ids, hashes = self._hash_table()
        if not len(ids):
            return []
        near = ids[hamming(signature.phash, hashes) <= REUSE_MAX_BITS]
        if not len(near):
            return []
        evidence = self.photo_evidence([int(i) for i in near])
        owner = self.store.photo_owner_map(list(evidence))
        photos = {p.id: p for p in self.store.photos_by_ids(list(evidence))}
        found: dict[int, Judged] = {}
        for pid, ev in evidence.items():
            colour = float(np.dot(signature.colour, ev.colour))
            if colour < REUSE_MIN_COLOUR or pid not in owner or owner[pid] in found or pid not in photos:
                continue
            reference = self._surface_reference(photos[pid])
            if reference is None:
                continue
            rw, rh = ev.features.size
            scale = np.diag([image.width / max(rw, 1), image.height / max(rh, 1), 1.0])
            surface = compare_surface(image, reference, scale, image.size, ev.features.size, ev.features.points)
            if not surface_agrees(surface.agreement, surface.cells):
                continue  # same layout, other content somewhere: searched like any photo
            cand = Candidate(owner[pid], pid, 1.0, 0, (pid,))
            object_colour = float(np.dot(signature.object_colour, ev.object_colour))
            found[owner[pid]] = Judged(cand, Evidence(1.0, 1.0, colour, 0, surface=surface.agreement,
                                                      surface_cells=surface.cells, object_colour=object_colour),
                                       1.0, "match", pid, exact_reuse=True)
        return list(found.values())[:top_k]

    def _hash_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Perceptual hashes of all registry photos, reloaded when the index changes."""
        idx = self.index()
        key = (id(idx), idx.count if idx else 0, idx.version if idx else 0)
        if self._hashes is None or self._hashes[0] != key:
            ids, hashes = self.store.photo_hashes()
            self._hashes = (key, ids, hashes)
        return self._hashes[1], self._hashes[2]

    def _present(self, judged: list[Judged], decoded: DecodedImage) -> list[SearchResult]:
        artefacts = self.store.artefacts_by_ids([j.candidate.artefact_id for j in judged])
        # Boxes were found on the decoded (possibly reduced) image: report them in original pixels.
        sx, sy = decoded.width / decoded.image.width, decoded.height / decoded.image.height
        results = []
        for j in judged:
            a = artefacts.get(j.candidate.artefact_id)
            if a is None:
                continue
            region = None
            if j.box is not None and not j.exact_reuse:
                x0, y0, x1, y1 = j.box
                region = Region(x0=int(x0 * sx), y0=int(y0 * sy), x1=min(decoded.width, round(x1 * sx)),
                                y1=min(decoded.height, round(y1 * sy)))
            ev = j.evidence
            surface = round(ev.surface, 4) if ev.surface_cells else None
            summary = evidence_line(ev, j.verdict, j.exact_reuse)
            evidence = (MatchEvidence(exact_reuse=True, colour=round(ev.colour, 4),
                                      object_colour=round(ev.object_colour, 4), surface=surface,
                                      surface_cells=ev.surface_cells, summary=summary)
                        if j.exact_reuse else
                        MatchEvidence(cosine=round(float(np.clip(ev.cosine, -1, 1)), 6), margin=round(ev.margin, 6),
                                      colour=round(ev.colour, 4), colour_margin=round(ev.colour_margin, 4),
                                      object_colour=round(ev.object_colour, 4),
                                      inliers=ev.inliers, matches=ev.matches, coverage=round(ev.coverage, 4),
                                      surface=surface, surface_cells=ev.surface_cells, summary=summary))
            results.append(SearchResult(
                artefact_id=a.id, inventory_number=a.inventory_number, institution=a.institution, title=a.title,
                status=ArtefactStatus(a.status), score=round(j.score, 6), verdict=j.verdict, photo_id=j.photo_id,
                photo_url=photo_url(j.photo_id), region=region, evidence=evidence,
            ))
        return results

