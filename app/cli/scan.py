"""``scan``: a marketplace dump checked against the registry, resumably."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from app.cli.console import ScanProgressBar, console, fail
from app.core.config import get_settings
from app.core.errors import AppError
from app.core.text import visible_controls


def scan(
    dump: Path = typer.Argument(
        ..., exists=True, help="JSONL or CSV listing dump, a folder of images, or a .tar/.zip of either."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: matches.jsonl, matches.csv, errors.jsonl, report.html."
    ),
    engine: str = typer.Option("local", "--engine", help="local (process pool here) or ray (Ray Data actor pool)."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Ray cluster to join (default: start a local Ray)."
    ),
    ray_actors: int = typer.Option(1, "--ray-actors", min=1, help="Search actors (each loads the model once)."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus-per-actor", min=0, help="GPUs per search actor on a GPU cluster."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted scan in the same --out folder."),
    min_verdict: str = typer.Option(
        "possible", "--min-verdict", help="Keep candidates at or above: match, possible, no_match."
    ),
    fetch: bool = typer.Option(False, "--fetch", help="Download photos given as http(s) URLs."),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", min=1, max=100, help="Artefacts looked at per photo (default HM_TOP_K)."
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Local engine: decode processes (default: cores - 1)."
    ),
) -> None:
    """Check every listing of a marketplace dump against the registry; resumable, with an HTML report."""
    from app.jobs.scan.runner import ScanOptions, run_scan

    options = ScanOptions(dump=dump, out=out, engine=engine, resume=resume, min_verdict=min_verdict, fetch=fetch,
                          top_k=top_k, workers=workers, ray_address=ray_address, ray_actors=ray_actors,
                          ray_gpus_per_actor=ray_gpus)
    try:
        with ScanProgressBar() as shown:
            summary = run_scan(options, get_settings(), progress=shown)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/yellow] finished groups are saved; run the same command with --resume")
        raise typer.Exit(130)
    except AppError as exc:
        # The message may quote the dump (an archive's member names): shown, not interpreted.
        fail(escape(visible_controls(exc.message)))
    if summary.status == "already_finished":
        console.print(f"{out} holds a finished scan of this dump: nothing to do (report: {out / 'report.html'})")
    else:
        c = summary.candidates
        console.print(
            f"scanned {summary.listings} listings, {summary.images} photos; errors {summary.errors} "
            f"({summary.row_errors} rows, {summary.image_errors} photos, see errors.jsonl); candidates: "
            f"{c['match']} match, {c['possible']} possible, {c['no_match']} no_match; "
            f"{summary.wall_s:.1f} s, {summary.images_per_s:.1f} photos/s. Report: {out / 'report.html'}"
        )
    print(json.dumps(summary.as_dict()))
