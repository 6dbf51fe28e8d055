"""``alerts list|export`` and ``webhooks add|list|remove|deliveries|deliver``: alerts raised by scans and
retro-hunts, and the endpoints told of each new one."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from app.cli.console import console, fail, open_registry, show
from app.core.config import get_settings
from app.core.errors import AppError

STATUS_HELP = "Only alerts of this status: new, confirmed or dismissed."


def _status(status: str | None) -> str | None:
    if status is None:
        return None
    if status not in ("new", "confirmed", "dismissed"):
        fail(f"Unknown status {status!r}: one of new, confirmed, dismissed.")
    return status


def _text(value: object) -> str:
    """Listing text for the terminal: its controls (bidi, escape sequences) made visible."""
    from app.core.text import visible_controls

    return visible_controls(str(value)) if value is not None else ""


def alerts_list(
    status: str | None = typer.Option("new", "--status", help=STATUS_HELP + " --status all: every alert."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line instead of a table."),
) -> None:
    """Alerts, newest first (by default the new ones, waiting for review)."""
    from app.registry.alerts import AlertStore, alert_payload

    wanted = None if status == "all" else _status(status)
    store = open_registry()
    try:
        rows, total = AlertStore(store.sessions).list(wanted, limit=limit)
    finally:
        store.close()
    if as_json:
        for a in rows:
            print(json.dumps(alert_payload(a), ensure_ascii=False))
        return
    table = Table(title=f"Alerts ({status or 'all'}): {total}")
    for col in ("id", "created", "status", "verdict", "score", "artefact", "platform", "listing", "url"):
        table.add_column(col)
    for a in rows:
        table.add_row(str(a.id), f"{a.created_at:%Y-%m-%d %H:%M}", a.status, a.verdict, f"{a.score:.2f}",
                      _text(a.inventory_number), _text(a.platform), _text(a.listing_title), _text(a.listing_url))
    show(table)


def alerts_export(
    out: Path = typer.Argument(..., help="OUT.jsonl: one alert a line, oldest first (no photos)."),
    status: str | None = typer.Option(None, "--status", help=STATUS_HELP),
) -> None:
    """Write alerts as JSONL (readable by the owner only: alerts name objects and sellers)."""
    from app.core.files import private_opener
    from app.registry.alerts import AlertStore, alert_payload

    wanted = _status(status)
    store = open_registry()
    n = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8", opener=private_opener) as f:
            for a in AlertStore(store.sessions).iter_all(wanted):
                f.write(json.dumps(alert_payload(a), ensure_ascii=False) + "\n")
                n += 1
    finally:
        store.close()
    console.print(f"exported {n} alerts to {out}")


# --- webhooks ----------------------------------------------------------------------------------------


def _webhooks(store):
    from app.registry.alerts import WebhookStore

    return WebhookStore(store.sessions, allow_private=get_settings().webhook_allow_private)


def webhooks_add(
    url: str = typer.Argument(..., help="An https URL on a public address (HM_WEBHOOK_ALLOW_PRIVATE: others too)."),
    secret: str = typer.Option("auto", "--secret", help="The signing secret; `auto` makes a random one."),
) -> None:
    """Register an endpoint that receives every new alert, signed; prints its secret once."""
    store = open_registry()
    try:
        created = _webhooks(store).add(url, secret=secret)
    except AppError as exc:
        fail(exc.message)
    finally:
        store.close()
    console.print(f"webhook {created.endpoint.id} ({created.endpoint.url}) added. Its signing secret is shown only "
                  "now: receivers check X-HM-Signature with it.")
    print(created.secret)


def webhooks_list() -> None:
    """Every endpoint, removed ones too; never the secret."""
    store = open_registry()
    try:
        rows = _webhooks(store).list()
    finally:
        store.close()
    table = Table(title="Webhook endpoints")
    for col in ("id", "url", "active", "created", "by", "removed"):
        table.add_column(col)
    for e in rows:
        table.add_row(str(e.id), e.url, "yes" if e.active else "no", f"{e.created_at:%Y-%m-%d %H:%M}", e.created_by,
                      f"{e.removed_at:%Y-%m-%d %H:%M}" if e.removed_at else "")
    show(table)


def webhooks_remove(endpoint_id: int = typer.Argument(..., help="The endpoint's id (see `webhooks list`).")) -> None:
    """Remove an endpoint: no new alert goes to it and its pending deliveries are given up."""
    store = open_registry()
    try:
        row = _webhooks(store).remove(endpoint_id)
    except AppError as exc:
        fail(exc.message)
    finally:
        store.close()
    console.print(f"webhook {row.id} ({row.url}) removed")


def webhooks_deliveries(
    endpoint: int | None = typer.Option(None, "--endpoint", help="Only this endpoint's deliveries."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line, with every attempt."),
) -> None:
    """The delivery log: each alert sent to each endpoint, its attempts and its outcome."""
    store = open_registry()
    try:
        rows, total = _webhooks(store).deliveries(endpoint, limit=limit)
    except AppError as exc:
        fail(exc.message)
    finally:
        store.close()
    if as_json:
        for d in rows:
            print(json.dumps({"id": d.id, "endpoint_id": d.endpoint_id, "alert_id": d.alert_id,
                              "idempotency_key": d.idempotency_key, "status": d.status, "attempts": d.attempts,
                              "last_status": d.last_status, "last_error": d.last_error, "log": d.attempt_log},
                             ensure_ascii=False))
        return
    table = Table(title=f"Webhook deliveries: {total}")
    for col in ("id", "endpoint", "alert", "status", "attempts", "last answer", "next attempt"):
        table.add_column(col)
    for d in rows:
        answer = _text(d.last_error or d.last_status or "")  # a receiver's reason phrase is its own text
        table.add_row(str(d.id), str(d.endpoint_id), str(d.alert_id), d.status, str(d.attempts), answer[:60],
                      f"{d.next_attempt_at:%Y-%m-%d %H:%M:%S}" if d.status == "pending" else "")
    show(table)


def webhooks_deliver() -> None:
    """Send the deliveries that are due now, once (the server does this on its own; for a registry used
    from the command line only)."""
    from app.jobs.webhooks import WebhookDispatcher

    store = open_registry()
    try:
        attempts = WebhookDispatcher(get_settings(), store.sessions).deliver_due()
    finally:
        store.close()
    ok = sum(a.ok for a in attempts)
    console.print(f"{len(attempts)} deliveries attempted: {ok} delivered, {len(attempts) - ok} to retry or failed")
