"""``registry import`` and ``registry export``: the artefact registry as JSONL or CSV."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli.console import console, open_service, progress_bar


def registry_import(manifest: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL or CSV.")) -> None:
    """Import artefacts (one per row); bad rows are reported with their line number and skipped."""
    from app.jobs.manifest import import_manifest, read_rows

    total = sum(1 for _ in read_rows(manifest))
    service = open_service()
    try:
        with progress_bar() as progress:
            task = progress.add_task("importing", total=total)
            report = import_manifest(service, manifest, progress=lambda n: progress.advance(task, n))
    finally:
        service.close()
    for err in report.errors:
        console.print(f"[yellow]line {err.line}:[/yellow] {err.message}")
    console.print(f"created {report.created}, updated {report.updated}, unchanged {report.unchanged}, "
                  f"photos added {report.photos_added}, rows skipped {len(report.errors)}")
    print(json.dumps(report.as_dict()))
    if report.errors:
        raise typer.Exit(2)


def registry_export(
    out: Path = typer.Argument(..., help="OUT.jsonl or OUT.csv; photos go to photos/ beside it."),
) -> None:
    """Export the registry in the import format."""
    from app.jobs.manifest import export_manifest

    service = open_service(start=False)
    try:
        n = export_manifest(service, out)
    finally:
        service.close()
    console.print(f"exported {n} artefacts to {out}")
