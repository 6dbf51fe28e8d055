"""``heritage-match scan``: check a dump against the checkpoint, run an engine, write the outputs.

Order of durability per group: candidates and errors are appended and fsynced, then the checkpoint
records the group. A kill between the two only means the group is done again on ``--resume``; the
final pass drops the duplicates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from app.core.config import Settings
from app.core.errors import AppError
from app.jobs.archive import ListingArchive
from app.jobs.market import MarketRecorder
from app.jobs.scan.checkpoint import PINNED, PINNED_LATER, Checkpoint, GroupStats
from app.jobs.scan.fetch import FetchPolicy
from app.jobs.scan.outputs import ERRORS, MATCHES, THUMBS, ScanOutputs, discard_unrecorded, finalize_rows
from app.jobs.scan.reader import Dump, DumpError, Listing, open_dump
from app.jobs.scan.report import write_report
from app.jobs.scan.work import VERDICT_RANK, DecodeConfig, GroupResult, GroupStream
from app.pipeline.decode import thumbnail_jpeg, working_side
from app.registry.alerts import AlertStore

if TYPE_CHECKING:  # imported at run time where they are used (the Ray engine needs ray installed)
    from app.jobs.scan.pipeline import LocalEngine
    from app.jobs.scan.ray_engine import RayEngine
    from app.service import MatchingService

log = logging.getLogger(__name__)

REPORT = "report.html"
GROUP_SIZE = 16  # listings per group: one search batch, one checkpoint step


class ScanRefused(AppError):
    code = "scan_refused"


@dataclass
class ScanOptions:
    dump: Path
    out: Path
    engine: str = "local"
    resume: bool = False
    min_verdict: str = "possible"
    fetch: bool = False
    top_k: int | None = None
    workers: int | None = None  # local engine: decode processes
    ray_address: str | None = None
    ray_actors: int = 1
    ray_gpus_per_actor: float = 0.0
    group_size: int = GROUP_SIZE
    # `watch`: listings already in the listings archive (same platform and listing id) are not searched again.
    skip_archived: bool = False


@dataclass
class ScanSummary:
    status: str  # finished | already_finished
    dump: str = ""
    model: str = ""
    listings: int = 0
    row_errors: int = 0
    images: int = 0
    image_errors: int = 0
    candidates: dict = field(default_factory=lambda: {"match": 0, "possible": 0, "no_match": 0})
    wall_s: float = 0.0
    images_this_run: int = 0
    images_per_s: float = 0.0
    archived_this_run: int = 0  # listing photos recorded in the listings archive (new or seen again)
    alerts_this_run: int = 0  # new alerts raised for `match` candidates
    archive_s: float = 0.0  # of wall_s, spent recording the archive and alerts (in the scan's main process)
    skipped_archived: int = 0  # listings not searched: already in the archive (skip_archived)

    @property
    def errors(self) -> int:
        return self.row_errors + self.image_errors

    def as_dict(self) -> dict:
        return {**asdict(self), "errors": self.errors}


class Progress(Protocol):
    """What the scan tells its caller: the total once known, then listings done as groups finish."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, listings: int, images: int) -> None: ...


class NoProgress:
    """A caller that follows nothing."""

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, listings: int, images: int) -> None:
        pass


def run_scan(options: ScanOptions, settings: Settings, service: MatchingService | None = None,
             progress: Progress | None = None) -> ScanSummary:
    from app.service import MatchingService

    t0 = time.perf_counter()
    progress = progress or NoProgress()
    if options.min_verdict not in VERDICT_RANK:
        raise ScanRefused(f"--min-verdict must be one of {', '.join(VERDICT_RANK)}")
    if options.engine not in ("local", "ray"):
        raise ScanRefused("--engine must be local or ray")
    if options.skip_archived and (options.engine != "local" or not settings.archive):
        raise ScanRefused("skipping archived listings needs the local engine and the listings archive (HM_ARCHIVE)")
    try:
        dump = open_dump(options.dump, settings.max_upload_bytes, settings.scan_max_line_kb * 1024,
                         settings.scan_max_images_per_listing)
    except DumpError as exc:
        raise ScanRefused(str(exc)) from exc
    if dump.kind == "folder" and Path(options.out).resolve().is_relative_to(Path(options.dump).resolve()):
        # The scan's own thumbnails would be read as new listings, and change the dump under its checkpoint.
        raise ScanRefused(f"--out {options.out} is inside the folder being scanned: choose a folder outside it")
    own_service = service is None
    service = service or MatchingService(settings)
    try:
        top_k = options.top_k or settings.top_k
        wanted = {"dump": str(Path(options.dump).resolve()), "identity": dump.identity(),
                  "group_size": options.group_size, "model": service.fingerprint, "top_k": top_k,
                  "min_verdict": options.min_verdict, "max_line_kb": settings.scan_max_line_kb,
                  "max_images_per_listing": settings.scan_max_images_per_listing}
        checkpoint = Checkpoint(options.out)
        state = _check_state(checkpoint, wanted, options)
        if state is not None and state.get("finished"):
            return ScanSummary(**{**state["summary"], "status": "already_finished", "wall_s": 0.0,
                                  "images_this_run": 0, "images_per_s": 0.0})
        if options.engine == "local":
            service.start()
        else:
            service.reconcile_index()
        service.check_index()  # no index, or one of another model: refuse before writing anything
        index = service.index
        assert index is not None  # check_index() refuses a missing one
        if index.count == 0:
            raise ScanRefused(f"the registry in {settings.data_dir} holds no indexed photo, so nothing could match: "
                              "check HM_DATA_DIR (or register artefacts first)")
        checkpoint.write_state({**wanted, "finished": False})
        done = checkpoint.done()
        progress.start(dump.count(), sum(s.listings + s.row_errors for s in done.values()))
        market = MarketRecorder(ListingArchive.for_service(service) if settings.archive else None,
                                AlertStore(service.store.sessions), source=Path(options.dump).name,
                                fingerprint=service.fingerprint)
        try:
            images_this_run, skipped = _scan(options, settings, service, dump, checkpoint, set(done), top_k, progress,
                                             market)
        finally:
            market.close()
        summary = _finish(options, service, checkpoint, wanted, images_this_run, time.perf_counter() - t0)
        summary.archived_this_run, summary.alerts_this_run = market.archived, market.alerts_raised
        summary.archive_s = round(market.seconds, 3)
        summary.skipped_archived = skipped
        # One audit event per scan run (not per photo: a dump may hold millions); the candidates
        # themselves are in the run's matches.jsonl.
        from app.security.audit import AuditLog

        AuditLog(service.store.sessions).record(
            "scan", model_fingerprint=service.fingerprint,
            index_version=service.index.version if service.index else None,
            details={"dump": wanted["dump"], "out": str(Path(options.out).resolve()), "engine": options.engine,
                     "min_verdict": options.min_verdict, "summary": summary.as_dict()})
        return summary
    finally:
        if own_service:
            service.close()


def _check_state(checkpoint: Checkpoint, wanted: dict, options: ScanOptions) -> dict | None:
    state = checkpoint.state()
    out = options.out
    if state is None:
        if (out / MATCHES).exists() or (out / ERRORS).exists():
            raise ScanRefused(f"{out} holds scan outputs but no checkpoint: choose an empty --out folder")
        return None
    if state.get("identity") != wanted["identity"]:
        raise ScanRefused(f"{out} holds a scan of another dump ({state.get('dump')}); choose another --out "
                          "folder for this one")
    changed = [k for k in PINNED if k != "identity"
               and state.get(k, wanted[k] if k in PINNED_LATER else None) != wanted[k]]
    if changed:
        detail = ", ".join(f"{k} {state.get(k)!r} -> {wanted[k]!r}" for k in changed)
        raise ScanRefused(f"{out} holds a scan of this dump with other settings ({detail}); resume it with the "
                          "same settings or choose another --out folder")
    if not state.get("finished") and not options.resume:
        raise ScanRefused(f"{out} holds an unfinished scan of this dump: add --resume to continue it, or choose "
                          "another --out folder")
    return state


def _scan(options: ScanOptions, settings: Settings, service: MatchingService, dump: Dump, checkpoint: Checkpoint,
          done: set[int], top_k: int, progress: Progress, market: MarketRecorder) -> tuple[int, int]:
    cfg = DecodeConfig(max_pixels=settings.max_image_pixels, min_side=working_side(service.encoder.preprocessing.size),
                       fetch=FetchPolicy(enabled=options.fetch, max_bytes=settings.max_upload_bytes,
                                         deadline_s=settings.fetch_deadline_s,
                                         allow_private=settings.fetch_allow_private),
                       proposals=settings.region_proposals,
                       archive_copy_px=settings.archive_copy_px if market.archive is not None else None,
                       archive_keep_full=settings.archive_keep_full)
    engine = _engine(options, settings, service)
    dropped = discard_unrecorded(options.out, done, options.group_size)
    if dropped:
        log.info("dropped %d rows of groups a killed run wrote but did not record; they are done again", dropped)
    outputs = ScanOutputs(options.out)
    images = 0

    def emit(result: GroupResult) -> None:
        nonlocal images
        stats: GroupStats = outputs.write_group(result)
        outputs.flush()
        # Archive and alerts before the checkpoint: a kill in between means the group is seen again on
        # --resume (the archive counts one extra sighting, the alerts are not raised twice), never lost.
        market.record(result)
        checkpoint.record([stats])
        images += stats.images
        progress.advance(stats.listings + stats.row_errors, stats.images)

    stream = GroupStream(Path(options.dump).resolve(), settings.max_upload_bytes, options.group_size,
                         frozenset(done), dump.max_line_bytes, dump.max_images)
    unarchived = UnarchivedListings(stream, market.archive) if options.skip_archived and market.archive else None
    try:
        engine.run(unarchived or stream, dump.source, cfg, top_k, options.min_verdict, emit)
    finally:
        outputs.close()
        checkpoint.close()
    return images, unarchived.skipped if unarchived else 0


class UnarchivedListings:
    """Groups without the listings the archive already holds (``watch``: a daily export repeats most of
    yesterday's listings). Read in the scan's main process (the local engine)."""

    def __init__(self, groups: GroupStream, archive: ListingArchive):
        self.groups = groups
        self.archive = archive
        self.skipped = 0

    def __iter__(self):
        for group in self.groups:
            kept = [it for it in group.items
                    if not isinstance(it, Listing) or not self.archive.known_listing(
                        it.fields.get("platform") or "", it.listing_id)]
            self.skipped += len(group.items) - len(kept)
            yield replace(group, items=kept)


def _engine(options: ScanOptions, settings: Settings, service: MatchingService) -> LocalEngine | RayEngine:
    if options.engine == "ray":
        from app.jobs.scan.ray_engine import RayEngine

        return RayEngine(settings, options.ray_address, options.ray_actors, options.ray_gpus_per_actor)
    from app.jobs.scan.pipeline import LocalEngine

    return LocalEngine(service, options.workers)


def _finish(options: ScanOptions, service: MatchingService, checkpoint: Checkpoint, wanted: dict,
            images_this_run: int, wall_s: float) -> ScanSummary:
    out = options.out
    matches, errors = finalize_rows(out)
    stats = checkpoint.done().values()
    summary = ScanSummary(
        status="finished", dump=wanted["dump"], model=wanted["model"],
        listings=sum(s.listings for s in stats), row_errors=sum(s.row_errors for s in stats),
        images=sum(s.images for s in stats), image_errors=sum(s.image_errors for s in stats),
        wall_s=round(wall_s, 3), images_this_run=images_this_run,
        images_per_s=round(images_this_run / wall_s, 2) if wall_s > 0 else 0.0,
    )
    for m in matches:
        summary.candidates[m["verdict"]] += 1
    report_facts = {**summary.as_dict(), "errors": len(errors)}
    write_report(out / REPORT, matches, out / THUMBS, registry_thumbnails(service, matches), report_facts)
    checkpoint.write_state({**wanted, "finished": True, "summary": {
        k: v for k, v in summary.as_dict().items() if k != "errors"}})
    return summary


def registry_thumbnails(service: MatchingService, matches: list[dict]) -> dict[int, bytes]:
    ids = sorted({m["registry_photo_id"] for m in matches})
    thumbs: dict[int, bytes] = {}
    for photo in service.store.photos_by_ids(ids):
        try:
            data = service.store.photos.read(photo.sha256, photo.format)
            thumbs[photo.id] = thumbnail_jpeg(service.decode(data).image)
        except (AppError, OSError):
            continue  # the report says the photo is unavailable
    return thumbs
