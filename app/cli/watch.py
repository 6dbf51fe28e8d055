"""``retrohunt``, ``watch`` and ``archive``: the market over time (the listings archive, retro-hunts, a dump folder)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Optional

import typer

from app.cli.console import ScanProgressBar, console, fail, open_service, progress_bar
from app.core.config import get_settings
from app.core.errors import AppError


def retrohunt(
    artefact: Optional[int] = typer.Option(None, "--artefact", help="Hunt this artefact's photos."),
    all_: bool = typer.Option(False, "--all", help="Hunt every registry photo (after a model change, say)."),
    since: Optional[dt.datetime] = typer.Option(
        None, "--since", help="With --all: only photos registered since this date (YYYY-MM-DD)."),
) -> None:
    """Search the listings archive for registry photos now, and raise alerts for what is found again."""
    from app.jobs.retrohunt import RetroHunt, photos_to_hunt

    if (artefact is None) == (not all_):
        fail("give --artefact ID or --all")
    if since is not None and artefact is not None:
        fail("--since goes with --all")
    service = open_service()
    try:
        photos = photos_to_hunt(service, artefact, since)
        hunt = RetroHunt(service)
        with progress_bar() as bar:
            task = bar.add_task("verifying archived listing photos", total=None)
            report = hunt.hunt(photos, progress=lambda n: bar.advance(task, n))
        hunt.archive.close()
    except AppError as exc:
        fail(exc.message)
    finally:
        service.close()
    console.print(f"{report.registry_photos} registry photos hunted, {report.candidates} archived listing photos "
                  f"verified, {report.alerts} new alerts (heritage-match alerts list)")
    print(json.dumps({"registry_photos": report.registry_photos, "candidates": report.candidates,
                      "alerts": report.alerts, "alert_ids": report.alert_ids}))


def watch(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder where dump files land."),
    out: Path = typer.Option(..., "--out", help="Where each dump's scan goes (a folder per dump file)."),
    interval: float = typer.Option(10.0, "--interval", min=0.5, help="Seconds between looks at the folder."),
    settle: float = typer.Option(5.0, "--settle", min=0, help="A file must be unchanged this long to be scanned."),
    once: bool = typer.Option(False, "--once", help="Scan what is there now, then stop."),
    min_verdict: str = typer.Option("possible", "--min-verdict", help="As for scan."),
    fetch: bool = typer.Option(False, "--fetch", help="Download photos given as http(s) URLs."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decode processes per scan."),
) -> None:
    """Scan each new dump file (JSONL, CSV, .zip, .tar) that lands in FOLDER, skipping listings the archive
    already holds; interrupted scans resume. Matches become alerts (and webhooks)."""
    from app.jobs.watch import FolderWatch

    settings = get_settings()
    if not settings.archive:
        fail("watch needs the listings archive (HM_ARCHIVE=true): it is what tells new listings from old")
    service = open_service()
    try:
        watcher = FolderWatch(folder, out, settings, service, min_verdict=min_verdict, fetch=fetch, workers=workers,
                              settle_s=settle)
        console.print(f"watching {folder} every {interval:g} s; scans go to {out} (Ctrl-C stops)")
        while True:
            for path in watcher.ready():
                console.print(f"scanning {path.name}")
                try:
                    with ScanProgressBar() as shown:
                        summary = watcher.scan(path, progress=shown)
                except AppError as exc:
                    console.print(f"[red]{path.name}:[/red] {exc.message}")
                    continue
                console.print(f"{path.name}: {summary.listings} listings searched, {summary.skipped_archived} already "
                              f"archived, {summary.candidates['match']} match, {summary.alerts_this_run} new alerts")
                print(json.dumps({"dump": str(path), **summary.as_dict()}), flush=True)
            if once:
                return
            watcher.sleep(interval)
    except KeyboardInterrupt:
        console.print("[yellow]stopped:[/yellow] an interrupted scan resumes at the next start")
        raise typer.Exit(130)
    finally:
        service.close()


def archive_status() -> None:
    """What the listings archive holds, and its index."""
    from app.jobs.archive import ListingArchive

    service = open_service()
    try:
        archive = ListingArchive.for_service(service)
        print(json.dumps(archive.status(), indent=2, default=str))
        archive.close()
    finally:
        service.close()


def archive_purge() -> None:
    """Remove archived listing photos not seen for HM_ARCHIVE_RETENTION_DAYS (0: keep for ever)."""
    from app.jobs.archive import ListingArchive
    from app.registry.alerts import AlertStore

    service = open_service()
    try:
        archive = ListingArchive.for_service(service)
        report = archive.purge(keep_photo_ids=AlertStore(service.store.sessions).archive_photo_ids())
        archive.close()
    finally:
        service.close()
    console.print(f"purged {report.photos} photos and {report.listings} listings ({report.files} files)")
