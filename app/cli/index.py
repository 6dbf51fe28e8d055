"""``index rebuild``: the FAISS index from the stored vectors."""

from __future__ import annotations

import json

import typer

from app.cli.console import console, open_service, progress_bar


def index_rebuild(
    reembed: bool = typer.Option(False, "--reembed", help="Embed photos lacking a vector of the active model."),
) -> None:
    """Rebuild the index from stored vectors (and embed missing ones with --reembed)."""
    service = open_service(start=False)
    service.encoder.load()
    try:
        # Photos lacking a frame vector, an object view or both: each is read once.
        todo = len({p.id for p in service.store.photos_missing_vectors(service.fingerprint)}
                   | {p.id for p in service.photos_missing_object_views()}) if reembed else 0
        unsigned = service.store.photos_missing_signatures()
        with progress_bar() as progress:
            task = progress.add_task("embedding", total=todo)
            report = service.rebuild_index(reembed=reembed,
                                           progress=lambda n: progress.advance(task, n)).model_dump()
            # Photos registered before verification existed (or before its signature version) get
            # their hash, colour and keypoints now rather than on their first search.
            sign = progress.add_task("signatures", total=len(unsigned))
            report["signed"] = service.backfill_signatures(unsigned, progress=lambda n: progress.advance(sign, n))
        from app.security.audit import AuditLog

        AuditLog(service.store.sessions).record("index.rebuild", model_fingerprint=report["fingerprint"],
                                                index_version=report["version"], details=report)
    finally:
        service.close()
    console.print(f"index rebuilt for {report['fingerprint']}: {report['vectors']} vectors, "
                  f"version {report['version']}")
    if report["missing"]:
        console.print(f"[yellow]{report['missing']} photos have no vector for this model: "
                      "run `heritage-match index rebuild --reembed`[/yellow]")
    print(json.dumps(report))
