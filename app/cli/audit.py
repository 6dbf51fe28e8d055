"""``audit export``: the audit trail as JSONL."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli.console import console, open_registry


def audit_export(out: Path = typer.Argument(..., help="OUT.jsonl: one event a line, oldest first.")) -> None:
    """Write the whole audit trail as JSONL."""
    from app.security.audit import AuditLog

    store = open_registry()
    try:
        n = AuditLog(store.sessions).export_jsonl(out)
    finally:
        store.close()
    console.print(f"exported {n} audit events to {out}")
