"""What the market watch shares: an alert's draft from a search result about a listing photo.

Scans (a listing photo found as `match`), retro-hunts (an archived photo found again after an object was
registered) and their tests all make alerts the same way, so every alert carries the same evidence.
"""

from __future__ import annotations

import time

from app.core.db import utcnow
from app.jobs.archive import ListingArchive
from app.jobs.scan.reader import Listing
from app.jobs.scan.work import GroupResult
from app.pipeline.decode import DecodedImage, thumbnail_jpeg
from app.registry.alerts import AlertDraft, AlertStore
from app.registry.archive import ListingFacts

ALERT_THUMB_SIDE = 384  # the listing photo kept with an alert: enough to compare by eye beside the registry's


def draft_alert(result: dict, listing: ListingFacts, photo: DecodedImage | bytes, *, source: str,
                archive_photo_id: int | None, fingerprint: str, sha256: str | None = None) -> AlertDraft:
    """``result``: a ``SearchResult`` as a dict; ``photo``: the listing photo decoded, or a JPEG of it already
    made (a scan's thumbnail), with ``sha256`` then."""
    if isinstance(photo, DecodedImage):
        sha256 = photo.sha256
        thumbnail = thumbnail_jpeg(photo.image, ALERT_THUMB_SIDE, quality=85)
    else:
        thumbnail = photo
    price = None if listing.price is None else f"{listing.price} {listing.currency or ''}".strip()
    return AlertDraft(
        artefact_id=result["artefact_id"], score=result["score"], verdict=result["verdict"], source=source,
        evidence=result.get("evidence") or {}, registry_photo_id=result.get("photo_id"),
        archive_photo_id=archive_photo_id, listing_photo_sha256=sha256, platform=listing.platform or None,
        listing_id=listing.listing_id, listing_url=listing.url, listing_title=listing.title,
        listing_seller=listing.seller, listing_price=price, listing_thumbnail=thumbnail,
        model_fingerprint=fingerprint)


class MarketRecorder:
    """A scan's single writer to the listings archive and the alerts: each finished group's photos are
    archived (seen again when already there) and each `match` candidate raises an alert."""

    def __init__(self, archive: ListingArchive | None, alerts: AlertStore, source: str, fingerprint: str):
        self.archive = archive
        self.alerts = alerts
        self.source = source
        self.fingerprint = fingerprint
        self.archived = 0
        self.alerts_raised = 0
        self.seconds = 0.0  # spent here: what the archive and the alerts cost the scan's main process

    def record(self, result: GroupResult) -> None:
        t0 = time.perf_counter()
        try:
            self._record(result)
        finally:
            self.seconds += time.perf_counter() - t0

    def _record(self, result: GroupResult) -> None:
        when = utcnow()
        for lr in result.listings:
            item = lr.item
            if not isinstance(item, Listing):
                continue
            facts = listing_facts(item, self.source)
            for img in lr.images:
                if img.error is not None or img.sha256 is None:
                    continue
                archive_id = None
                if self.archive is not None and img.copy is not None:
                    recorded = self.archive.store.record(
                        facts, img.sha256, img.full, img.copy, img.width, img.height, img.format, vector=img.vector,
                        fingerprint=self.fingerprint if img.vector is not None else None, seen_at=when)
                    archive_id = recorded.photo_id
                    self.archived += 1
                for r in img.results:
                    if r["verdict"] != "match" or img.thumb is None:
                        continue
                    _, created = self.alerts.raise_alert(draft_alert(
                        r, facts, img.thumb, source="scan", archive_photo_id=archive_id, fingerprint=self.fingerprint,
                        sha256=img.sha256))
                    self.alerts_raised += int(created)
        # The archive's index is not brought up to date here: compressing or retraining it (at 50,000 photos,
        # then at each fourfold growth) takes seconds to minutes, and whoever searches it next (the server's
        # retro-hunt) reads the vectors stored since its last save on its own.

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()


def listing_facts(listing: Listing, source: str) -> ListingFacts:
    return ListingFacts.from_fields(listing.listing_id, listing.fields, source)
