"""``search`` one photo in the local registry, and ``demo``, which seeds a registry to search."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from app.cli.console import console, fail, open_service, show
from app.core.errors import AppError


def demo(if_empty: bool = typer.Option(False, "--if-empty", help="Only when the registry has no artefact.")) -> None:
    """Seed the registry with the 24 demo coins (scikit-image's public-domain coins photograph)."""
    from app.jobs.demo import seed_demo

    service = open_service()
    try:
        added = seed_demo(service, if_empty=if_empty)
    finally:
        service.close()
    console.print(f"demo registry: {added} coins added" if added else "demo registry: nothing to add")


def search(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="Photo to look up."),
    top_k: int = typer.Option(5, "--top-k", min=1, max=100),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON response."),
) -> None:
    """Look up one photo in the local registry."""
    from app.pipeline.decode import sha256_hex
    from app.security.audit import AuditLog

    service = open_service()
    audit = AuditLog(service.store.sessions)
    data = image.read_bytes()
    try:
        if service.index is not None and service.index.count == 0:  # a mistyped HM_DATA_DIR, most often
            console.print(f"[yellow]warning:[/yellow] the registry in {service.settings.data_dir} holds no indexed "
                          "photo: no search can match (check HM_DATA_DIR).")
        response = service.search(data, top_k=top_k)
        response.audit_id = audit.record_search(response)
    except AppError as exc:
        audit.record_search(query_sha256=sha256_hex(data), outcome=exc.code, fingerprint=service.fingerprint)
        fail(exc.message)
    finally:
        service.close()
    if as_json:
        print(response.model_dump_json(indent=2))
        return
    table = Table(title=f"{image.name}  ({response.model.fingerprint}, {response.took_ms:.0f} ms)")
    for col in ("#", "verdict", "score", "inventory", "title", "status"):
        table.add_column(col)
    for i, r in enumerate(response.results, start=1):
        colour = {"match": "green", "possible": "yellow"}.get(r.verdict, "dim")
        table.add_row(str(i), f"[{colour}]{r.verdict}[/{colour}]", f"{r.score:.3f}", r.inventory_number,
                      r.title or "", str(r.status))
    show(table)
