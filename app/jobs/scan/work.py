"""The unit of scan work, shared by the local and the Ray engine.

Listings are cut into groups of ``group_size`` consecutive positions (``seq // group_size``). A group
is decoded, searched in one ``search_images`` call and checkpointed as a whole, so every run, resumed
or not, local or on Ray, embeds exactly the same batches and writes the same numbers.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from app.core.errors import AppError
from app.jobs.scan.fetch import FetchPolicy, fetch
from app.jobs.scan.reader import MAX_IMAGES, MAX_LINE_BYTES, Listing, RowError, open_dump
from app.jobs.scan.sources import ImageSource, ImageUnavailable, has_scheme, is_url
from app.pipeline.decode import DecodedImage, decode_image, thumbnail_jpeg
from app.pipeline.signature import analyse_photo

if TYPE_CHECKING:  # decode workers import this module: they need no model, registry or schemas
    from app.schemas import SearchResponse
    from app.service import MatchingService

VERDICT_RANK = {"no_match": 0, "possible": 1, "match": 2}
THUMB_SIDE = 256


@dataclass(frozen=True)
class DecodeConfig:
    max_pixels: int
    min_side: int
    fetch: FetchPolicy
    # Also compute the photo's model-independent analysis (signature, keypoints, proposals) in the
    # decode worker, so the process that embeds does less; ``proposals`` follows HM_REGION_PROPOSALS.
    analyse: bool = True
    proposals: bool = True
    # Listings archive on: the searching side keeps each photo's whole-frame vector and a downsized copy
    # (longest side this many pixels) for the scan's main process to record; None: archive off.
    archive_copy_px: int | None = None
    archive_keep_full: bool = False  # ... and the photo's bytes (HM_ARCHIVE_KEEP_FULL)


@dataclass
class Group:
    number: int
    items: list[Listing | RowError] = field(default_factory=list)

    def image_jobs(self) -> list[tuple[int, int, str]]:
        """(seq, image index, reference) for every image of the group's listings."""
        return [(it.seq, i, ref) for it in self.items if isinstance(it, Listing) for i, ref in enumerate(it.images)]


@dataclass
class ImageResult:
    index: int
    ref: str
    sha256: str | None = None
    error: str | None = None
    results: list[dict] = field(default_factory=list)  # SearchResult dicts at or above the minimum verdict
    thumb: bytes | None = None  # JPEG of the listing photo, kept only when it has candidates
    # For the listings archive (DecodeConfig.archive_copy_px): the photo as decoded, a downsized copy, its vector.
    width: int = 0
    height: int = 0
    format: str = ""
    copy: bytes | None = None
    vector: np.ndarray | None = None
    full: bytes | None = None  # the photo's bytes, with HM_ARCHIVE_KEEP_FULL


@dataclass
class ListingResult:
    item: Listing | RowError
    images: list[ImageResult] = field(default_factory=list)


@dataclass
class GroupResult:
    number: int
    listings: list[ListingResult]

    def dumps(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> "GroupResult":
        return pickle.loads(data)


def groups(items: Iterable[Listing | RowError], group_size: int, done: set[int]) -> Iterator[Group]:
    """Consecutive items cut at fixed positions; groups already checkpointed are skipped."""
    current: Group | None = None
    for item in items:
        number = item.seq // group_size
        if current is not None and current.number != number:
            yield current
            current = None
        if number in done:
            continue
        if current is None:
            current = Group(number)
        current.items.append(item)
    if current is not None:
        yield current


@dataclass(frozen=True)
class GroupStream:
    """The groups of a dump still to do, re-readable anywhere: it holds the dump's path, not its rows,
    so it pickles small and a Ray read task streams the dump itself."""

    dump: Path
    max_bytes: int
    group_size: int
    done: frozenset[int]
    max_line_bytes: int = MAX_LINE_BYTES
    max_images: int = MAX_IMAGES

    def __iter__(self) -> Iterator[Group]:
        dump = open_dump(self.dump, self.max_bytes, self.max_line_bytes, self.max_images)
        return groups(dump.items(), self.group_size, set(self.done))


def read_image(source: ImageSource, ref: str, cfg: DecodeConfig) -> bytes:
    if is_url(ref):
        return fetch(ref, cfg.fetch)
    if has_scheme(ref):
        raise ImageUnavailable(f"{ref!r}: only relative paths and http(s) URLs are read")
    return source.read(ref)


def decode_ref(source: ImageSource, ref: str, cfg: DecodeConfig) -> tuple[DecodedImage | None, str | None]:
    """Read and decode one listing photo; never raises (a worker must not die of one bad photo)."""
    try:
        data = read_image(source, ref, cfg)
        decoded = decode_image(data, max_pixels=cfg.max_pixels, min_side=cfg.min_side)
        if cfg.analyse:
            decoded = replace(decoded, analysis=analyse_photo(decoded.image, cfg.proposals))
        if cfg.archive_copy_px is not None and cfg.archive_keep_full:
            decoded = replace(decoded, original=data)
        return decoded, None
    except ImageUnavailable as exc:
        return None, str(exc)
    except AppError as exc:
        return None, exc.message
    except Exception as exc:  # a decoder bug on hostile input: report it, keep scanning
        return None, f"{type(exc).__name__}: {exc}"


_decode_process_ready = False


def single_threaded_decode_process() -> None:
    """Once per decode worker process: one thread for OpenCV (SIFT), BLAS and OpenMP.

    Decode workers are parallel as processes. Left alone, OpenCV gives every worker's SIFT a pool of
    one thread per core, which on a small machine fights the embedding's threads: on 2 cores a 200-photo
    scan's decode worker spent 45 ms of system time per photo, 4 ms with one thread. (Lowering the
    workers' priority instead made the scan slower: 6.4-6.8 against 7.2-8.2 photos/s.)
    """
    global _decode_process_ready
    if not _decode_process_ready:
        from app.core.threads import apply_thread_limits

        apply_thread_limits(1)
        _decode_process_ready = True


def decode_group(source: ImageSource, group: Group, cfg: DecodeConfig) -> dict[tuple[int, int], tuple]:
    return {(seq, i): decode_ref(source, ref, cfg) for seq, i, ref in group.image_jobs()}


def search_group(service: MatchingService, group: Group, decoded: dict[tuple[int, int], tuple], top_k: int,
                 min_verdict: str, archive_copy_px: int | None = None) -> GroupResult:
    """Search a group's decoded photos in one batch; results below ``min_verdict`` are dropped.

    With ``archive_copy_px`` each searched photo also carries what the listings archive keeps of it.
    """
    keys = [k for k, (img, _) in decoded.items() if img is not None]
    found: dict[tuple[int, int], list[dict] | str] = {}
    vectors: dict[tuple[int, int], np.ndarray | None] = {}
    try:
        frame_vectors: list[np.ndarray | None] = []
        responses = service.search_images([decoded[k][0] for k in keys], top_k,
                                          frame_vectors=frame_vectors) if keys else []
        found.update({k: _kept(r, min_verdict) for k, r in zip(keys, responses)})
        vectors.update(zip(keys, frame_vectors))
    except AppError:
        raise  # index missing or of another model: the whole scan must stop, not every photo fail
    except Exception:
        for k in keys:  # one photo broke the batch: search one by one so only that photo is lost
            try:
                found[k] = _kept(service.search_images([decoded[k][0]], top_k)[0], min_verdict)
            except AppError:
                raise
            except Exception as exc:
                found[k] = f"search failed: {type(exc).__name__}: {exc}"
    listings = []
    for item in group.items:
        lr = ListingResult(item)
        if isinstance(item, Listing):
            for i, ref in enumerate(item.images):
                img, error = decoded[(item.seq, i)]
                res = ImageResult(i, ref, sha256=img.sha256 if img is not None else None, error=error)
                outcome = found.get((item.seq, i))
                if isinstance(outcome, str):
                    res.error = outcome
                elif outcome:
                    res.results = outcome
                    res.thumb = thumbnail_jpeg(img.image, THUMB_SIDE, quality=80)
                if archive_copy_px is not None and img is not None and res.error is None:
                    res.width, res.height, res.format = img.width, img.height, img.format
                    res.copy = thumbnail_jpeg(img.image, archive_copy_px, quality=85)
                    res.vector = vectors.get((item.seq, i))
                    res.full = img.original
                lr.images.append(res)
        listings.append(lr)
    return GroupResult(group.number, listings)


def _kept(response: SearchResponse, min_verdict: str) -> list[dict]:
    floor = VERDICT_RANK[min_verdict]
    return [r.model_dump(mode="json") for r in response.results if VERDICT_RANK[r.verdict] >= floor]
