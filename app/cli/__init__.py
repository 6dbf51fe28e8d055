"""The ``heritage-match`` command line.

This module lays out the commands and their groups; each command lives in the module of its group
(``serve``, ``search``, ``registry``, ``index``, ``models``, ``evaluate``, ``calibrate``, ``scan``,
``keys``, ``audit``, ``alerts`` with ``webhooks``, ``watch`` with ``retrohunt`` and ``archive``, ``db``) and
imports what it needs only when it runs, so that the command line starts quickly. ``console`` holds
what they share: the console, errors, progress bars, the service and registry openers.
"""

from __future__ import annotations

import logging
import sys

import typer

from app.cli import alerts, audit, calibrate, db, evaluate, index, keys, models, registry, scan, search, serve, watch
from app.cli.console import console
from app.core.config import get_settings
from app.core.errors import AppError

__all__ = ["app", "main"]

app = typer.Typer(help="Match photos of cultural objects against a registry of artefacts at risk.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
registry_app = typer.Typer(help="Import and export the artefact registry.", no_args_is_help=True)
index_app = typer.Typer(help="Maintain the FAISS index.", no_args_is_help=True)
models_app = typer.Typer(help="Model weights: fetch and list.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail of searches and registry changes.", no_args_is_help=True)
alerts_app = typer.Typer(help="Alerts: registered objects seen in listings.", no_args_is_help=True)
archive_app = typer.Typer(help="The listings archive: every listing photo scans have seen.", no_args_is_help=True)
db_app = typer.Typer(help="The registry database: upgrade its schema, its revision, move photos in or out.",
                     no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhook endpoints that receive new alerts, and their delivery log.",
                           no_args_is_help=True)

app.command("serve")(serve.serve)
app.command("demo")(search.demo)
app.command("search")(search.search)
app.command("evaluate")(evaluate.evaluate)
app.command("calibrate")(calibrate.calibrate)
app.command("scan")(scan.scan)
app.command("watch")(watch.watch)
app.command("retrohunt")(watch.retrohunt)
registry_app.command("import")(registry.registry_import)
registry_app.command("export")(registry.registry_export)
index_app.command("rebuild")(index.index_rebuild)
models_app.command("list")(models.models_list)
models_app.command("fetch")(models.models_fetch)
models_app.command("export")(models.models_export)
keys_app.command("create")(keys.keys_create)
keys_app.command("list")(keys.keys_list)
keys_app.command("revoke")(keys.keys_revoke)
audit_app.command("export")(audit.audit_export)
archive_app.command("status")(watch.archive_status)
archive_app.command("purge")(watch.archive_purge)
alerts_app.command("list")(alerts.alerts_list)
alerts_app.command("export")(alerts.alerts_export)
webhooks_app.command("add")(alerts.webhooks_add)
webhooks_app.command("list")(alerts.webhooks_list)
webhooks_app.command("remove")(alerts.webhooks_remove)
webhooks_app.command("deliveries")(alerts.webhooks_deliveries)
webhooks_app.command("deliver")(alerts.webhooks_deliver)
db_app.command("upgrade")(db.db_upgrade)
db_app.command("current")(db.db_current)
db_app.command("move-photos")(db.db_move_photos)

app.add_typer(registry_app, name="registry")
app.add_typer(index_app, name="index")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(archive_app, name="archive")
app.add_typer(alerts_app, name="alerts")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(db_app, name="db")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from app.security.actor import cli_principal, set_principal

    set_principal(cli_principal())  # registry changes made here are audited as the local operator


def main() -> None:
    from sqlalchemy.exc import OperationalError

    try:
        app()
    except AppError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        sys.exit(1)
    except OperationalError as exc:  # a registry database that cannot be opened or written
        settings = get_settings()
        if settings.database_url and not settings.database_url.startswith("sqlite"):
            hint = "check HM_DATABASE_URL: the server's address, the database, the role and its password"
        else:
            hint = f"check that HM_DATA_DIR ({settings.data_dir}) exists and this user may write to it"
        console.print(f"[red]error:[/red] the registry database cannot be used ({exc.orig}): {hint}.")
        sys.exit(1)
    except OSError as exc:  # a folder that cannot be created, a file where a folder is wanted...
        console.print(f"[red]error:[/red] {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        sys.exit(1)
