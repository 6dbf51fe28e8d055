"""Retro-hunt: registry photos searched against the listings archive, the best archived photos verified.

A looted object usually reaches the market before it reaches the registry. When photos are registered,
each one's vector is searched in the archive's index; the ``retrohunt_candidates`` nearest archived
listing photos are then searched again, from the copy the archive kept, through the service's own search
(``search_images``): the same geometry, surface and calibrated verdict as any search, so a retro-hunt
says what a search of that listing photo would say now. Each archived photo whose answer puts the new
artefact at `possible` or `match` raises an alert (``AlertStore`` keeps one per photo and artefact).

``RetroHunter`` does this in the background for a running server: it follows the registry's photo ids
(they only grow), so photos registered by any process (the API, the web pages, ``registry import``) are
hunted within seconds, and a hunt interrupted by a stop is taken up at the next start. Its progress is kept
in the registry database and one process hunts at a time: on PostgreSQL an advisory lock, so replicas on
several machines take turns on one hunt; on SQLite a file lock in the data directory beside the database.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from app.core.errors import AppError
from app.core.files import FILE_MODE
from app.jobs.archive import ListingArchive
from app.jobs.market import draft_alert
from app.registry.alerts import AlertStore
from app.registry.archive import HuntPosition, ListingFacts

if TYPE_CHECKING:
    from app.registry.models import Photo
    from app.service import MatchingService

log = logging.getLogger(__name__)

STATE_FILE = "retrohunt.json"
LOCK_FILE = "retrohunt.lock"
POLL_S = 2.0  # how often the hunter looks for photos registered by other processes
BATCH = 16  # archived photos searched in one batch
LATE_COMMIT_S = 60.0  # a registration's transaction commits well within this of its insert
PURGE_EVERY_S = 24 * 3600  # the archive's retention is applied at start and daily
ALERT_VERDICTS = ("match", "possible")
_PG_HUNT_LOCK = 0x686D5F68756E7400  # pg_try_advisory_lock key of the hunt ("hm_hunt")


@dataclass
class HuntReport:
    registry_photos: int = 0
    candidates: int = 0  # archived photos verified
    alerts: int = 0  # new alerts raised
    alert_ids: list[int] = field(default_factory=list)

    def add(self, other: "HuntReport") -> None:
        self.registry_photos += other.registry_photos
        self.candidates += other.candidates
        self.alerts += other.alerts
        self.alert_ids += other.alert_ids


class RetroHunt:
    """Hunt given registry photos through the archive (synchronously: the CLI and the background hunter)."""

    def __init__(self, service: MatchingService, archive: ListingArchive | None = None,
                 alerts: AlertStore | None = None):
        self.service = service
        self.archive = archive or ListingArchive.for_service(service)
        self.alerts = alerts or AlertStore(service.store.sessions)
        self.candidates = service.settings.retrohunt_candidates

    def hunt(self, photos: Iterable[Photo], progress: Callable[[int], object] | None = None) -> HuntReport:
        """Search each photo's stored vector in the archive, verify the nearest archived photos, alert."""
        report = HuntReport()
        photos = list(photos)
        if not photos or self.archive.store.vector_count(self.archive.fingerprint) == 0:
            return report
        vectors = self.service.store.vectors_of(self.service.fingerprint, [p.id for p in photos])
        hunted = [p for p in photos if p.id in vectors]
        report.registry_photos = len(hunted)
        if not hunted:
            return report
        # Which archived photos may show which artefacts: each verified once, whichever photo found it.
        wanted: dict[int, set[int]] = {}
        hits = self.archive.search(np.stack([vectors[p.id] for p in hunted]), self.candidates)
        for photo, row in zip(hunted, hits):
            for hit in row:
                wanted.setdefault(hit.photo_id, set()).add(photo.artefact_id)
        ids = sorted(wanted)
        for start in range(0, len(ids), BATCH):
            batch = ids[start:start + BATCH]
            report.add(self._verify(batch, wanted))
            if progress is not None:
                progress(len(batch))
        return report

    def _verify(self, archive_ids: list[int], wanted: dict[int, set[int]]) -> HuntReport:
        report = HuntReport()
        decoded, kept = [], []
        for aid in archive_ids:
            try:
                decoded.append(self.service.decode(self.archive.copy_bytes(aid)))
                kept.append(aid)
            except (AppError, OSError) as exc:  # a copy purged or damaged meanwhile costs that one photo
                log.warning("Retro-hunt: archived photo %d cannot be read: %s", aid, exc)
        if not decoded:
            return report
        responses = self.service.search_images(decoded)
        report.candidates = len(kept)
        for aid, image, response in zip(kept, decoded, responses):
            for result in response.results:
                if result.artefact_id not in wanted[aid] or result.verdict not in ALERT_VERDICTS:
                    continue
                sightings = self.archive.listings_of(aid)
                if not sightings:
                    continue  # purged meanwhile
                listing = sightings[0].listing  # the listing it was seen in last
                facts = ListingFacts(listing_id=listing.listing_id, platform=listing.platform, url=listing.url,
                                     title=listing.title, seller=listing.seller, price=listing.price,
                                     currency=listing.currency)
                alert, created = self.alerts.raise_alert(draft_alert(
                    result.model_dump(mode="json"), facts, image, source="retrohunt", archive_photo_id=aid,
                    fingerprint=self.service.fingerprint))
                if created:
                    report.alerts += 1
                    report.alert_ids.append(alert.id)
        return report


class HuntProgress:
    """The last registry photo id hunted, per model, in the registry database (``hunt_positions``). It only moves
    forward; a registry hunted by an earlier version takes over that version's file in the data directory."""

    def __init__(self, sessions: sessionmaker, data_dir: Path):
        self.sessions = sessions
        self.legacy_path = Path(data_dir) / STATE_FILE

    def last(self, fingerprint: str) -> int | None:
        with self.sessions() as s:
            found = s.scalar(select(HuntPosition.last_photo_id).where(HuntPosition.model_fingerprint == fingerprint))
        if found is not None:
            return int(found)
        legacy = self._legacy(fingerprint)
        if legacy is not None:
            self.save(fingerprint, legacy)
        return legacy

    def save(self, fingerprint: str, photo_id: int) -> None:
        for attempt in range(2):  # two processes saving a model's first position: the second updates it
            try:
                with self.sessions.begin() as s:
                    row = s.get(HuntPosition, fingerprint, with_for_update=True)
                    if row is None:
                        s.add(HuntPosition(model_fingerprint=fingerprint, last_photo_id=int(photo_id)))
                    elif photo_id > row.last_photo_id:
                        row.last_photo_id = int(photo_id)
                return
            except IntegrityError:
                if attempt:
                    raise

    def _legacy(self, fingerprint: str) -> int | None:
        try:
            return int(json.loads(self.legacy_path.read_text()).get(fingerprint))
        except (OSError, ValueError, TypeError):
            return None


@contextmanager
def hunt_turn(engine: Engine, data_dir: Path) -> Iterator[bool]:
    """Whether this process may hunt now (True), held until the block ends; False: another one is hunting."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:  # a session lock on this connection, released before it goes back
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": _PG_HUNT_LOCK}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_HUNT_LOCK})
                    conn.commit()
        return
    fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class RetroHunter:
    """The background hunt of a running server: photos registered since the last one hunted, every
    ``POLL_S`` seconds or when woken. Registration never waits for it."""

    def __init__(self, service: MatchingService, poll_s: float = POLL_S,
                 on_alert: Callable[[object], None] | None = None):
        self.service = service
        self.poll_s = poll_s
        self.on_alert = on_alert  # e.g. WebhookDispatcher.wake: a new alert goes out at once
        self._purged_at = 0.0
        self.progress = HuntProgress(service.store.sessions, service.settings.data_dir)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hunt: RetroHunt | None = None
        self._hunted: set[int] = set()  # photo ids above the kept progress already hunted by this process

    def start(self) -> "RetroHunter":
        if not self.service.settings.archive:
            return self
        fingerprint = self.service.fingerprint
        if self.progress.last(fingerprint) is None:
            # First start: what was registered before the archive existed has nothing to find in it.
            self.progress.save(fingerprint, self.service.store.last_photo_id())
        self._thread = threading.Thread(target=self._run, name="retrohunt", daemon=True)
        self._thread.start()
        return self

    def wake(self, *_: object) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._hunt is not None:
            self._hunt.archive.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_pending()
                if time.monotonic() - self._purged_at > PURGE_EVERY_S:
                    self.purge()
            except Exception:  # a failed round is logged and tried again; the server goes on
                log.exception("Retro-hunt round failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def purge(self) -> None:
        """Apply the archive's retention (photos an alert names are kept)."""
        self._purged_at = time.monotonic()
        if self.service.settings.archive_retention_days <= 0:
            return
        hunt = self._hunt or RetroHunt(self.service)
        hunt.archive.purge(keep_photo_ids=hunt.alerts.archive_photo_ids())

    def _pending(self, last: int) -> bool:
        return any(p.id not in self._hunted for p in self.service.store.photos_after(last, limit=2000))

    def run_pending(self) -> HuntReport:
        """Hunt the photos registered since the last hunted one (one process at a time)."""
        report = HuntReport()
        fingerprint = self.service.fingerprint
        last = self.progress.last(fingerprint) or 0
        if self.service.store.last_photo_id() <= last or not self._pending(last):
            return report
        with hunt_turn(self.service.store.engine, self.service.settings.data_dir) as mine:
            if not mine:
                return report  # another worker or replica is hunting
            if self._hunt is None:
                self._hunt = RetroHunt(self.service)
                if self.on_alert is not None:
                    self._hunt.alerts.on_created(self.on_alert)
            while not self._stop.is_set():
                last = self.progress.last(fingerprint) or 0
                window = self.service.store.photos_after(last, limit=2000)
                photos = [p for p in window if p.id not in self._hunted][:64]
                if photos:
                    report.add(self._hunt.hunt(photos))
                    self._hunted.update(p.id for p in photos)
                # Ids are given in insert order, not commit order (PostgreSQL, concurrent writers): a photo
                # whose transaction commits late may appear below ids already seen. So the kept progress only
                # passes photos older than LATE_COMMIT_S; newer ones stay in the window, hunted once by this
                # process (it remembers them; after a restart, or when another replica takes the next turn, the
                # alerts' dedupe keeps a second hunt of one harmless).
                settled = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=LATE_COMMIT_S)
                done = [p for p in window if p.id in self._hunted]
                safe = last
                for p in done:  # ascending ids: stop at the first photo too recent to rule out a late commit
                    if p.created_at > settled:
                        break
                    safe = p.id
                if safe > last:
                    self.progress.save(fingerprint, safe)
                    self._hunted = {i for i in self._hunted if i > safe}
                if not photos:
                    break
        if report.alerts:
            log.info("Retro-hunt: %d registry photos, %d archived photos verified, %d alerts", report.registry_photos,
                     report.candidates, report.alerts)
        return report


def photos_to_hunt(service: MatchingService, artefact_id: int | None = None,
                   since: dt.datetime | None = None) -> list[Photo]:
    """The registry photos ``heritage-match retrohunt`` hunts: one artefact's, or all (added since a date)."""
    if artefact_id is not None:
        return list(service.store.get_artefact(artefact_id).photos)
    photos: list[Photo] = []
    last = 0
    while True:
        page = service.store.photos_after(last, limit=1000, since=since)
        if not page:
            return photos
        photos += page
        last = page[-1].id
