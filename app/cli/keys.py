"""``keys create``, ``keys list`` and ``keys revoke``: the API keys (only their hashes are stored)."""

from __future__ import annotations

import typer
from rich.table import Table

from app.cli.console import console, fail, open_registry, show
from app.core.errors import AppError


def keys_create(
    name: str = typer.Option(..., "--name", help="Who or what uses the key."),
    role: str = typer.Option(..., "--role", help="admin, registrar, officer or monitor."),
) -> None:
    """Create a key and print it once: only its hash is stored."""
    from app.security.keys import KeyStore

    store = open_registry()
    try:
        created = KeyStore(store.sessions).create(name, role)
    except AppError as exc:
        fail(exc.message)
    finally:
        store.close()
    console.print(f"key {created.key.id} ({created.key.name}, {created.key.role}) created. It is shown only "
                  "now: send it as `Authorization: Bearer <key>`.")
    print(created.token)


def keys_list() -> None:
    """Every key with its role, prefix and state; never the secret."""
    from app.security.keys import KeyStore

    store = open_registry()
    try:
        keys = KeyStore(store.sessions).list()
    finally:
        store.close()
    table = Table(title="API keys")
    for col in ("id", "name", "role", "prefix", "created", "revoked"):
        table.add_column(col)
    for k in keys:
        table.add_row(str(k.id), k.name, k.role, k.prefix + "...", f"{k.created_at:%Y-%m-%d %H:%M}",
                      f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    show(table)


def keys_revoke(key: str = typer.Argument(..., help="The key's id, or its name when one active key has it.")) -> None:
    """Revoke a key: its next request is refused."""
    from app.security.keys import KeyStore

    store = open_registry()
    try:
        row = KeyStore(store.sessions).revoke(key)
    except AppError as exc:
        fail(exc.message)
    finally:
        store.close()
    console.print(f"key {row.id} ({row.name}, {row.role}) revoked")
