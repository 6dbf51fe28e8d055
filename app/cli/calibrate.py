"""``calibrate``: fit the calibrated score and the verdict thresholds on the active registry.

A "listing transforms" pack is made from the registry's own photos (``app/jobs/listing_transforms.py``:
crops, rotations, re-lit, re-compressed, watermarked and screenshot copies as queries; some objects
left unregistered and near twins of registered ones as open-set queries), searched as the API
searches, and the fit is checked on objects it never saw (``app/jobs/calibration.py``). The result
goes to ``<HM_DATA_DIR>/calibrations/<model>.json``, which then takes precedence over the shipped
calibration for that exact model.

It only reads the registry and writes that one file atomically, so it may run while ``serve`` does;
a running server takes the new calibration up within seconds (``PhotoSearch.calibration``).
"""

from __future__ import annotations

import hashlib
import json
import random
import shlex
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.progress import TaskID
from rich.table import Table

from app.cli.console import console, fail, open_registry, progress_bar, show
from app.core.config import get_settings

MIN_ARTEFACTS = 8
GENERATED_PACK = "registry-listing"  # the name of the pack made from the registry


def calibrate(
    holdout_share: float = typer.Option(
        0.2, "--holdout-share", min=0.05, max=0.5,
        help="Share of the artefacts left out of the pack's registry: their queries are of unregistered objects."),
    twins: Optional[int] = typer.Option(
        None, "--twins", min=0, help="At most this many near-twin queries (default: one per registered artefact)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use at most this many artefacts."),
    folds: Optional[int] = typer.Option(
        None, "--folds", min=2, help="Object-grouped folds of the cross-validation (default 5)."),
    seed: int = typer.Option(2026, "--seed", help="Seed of the transforms, the held-out objects and the folds."),
    packs: Optional[list[Path]] = typer.Option(
        None, "--pack", metavar="PACK", help="Also fit and check on this benchmark pack (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Fit and print the figures, but store nothing."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the calibration (with its figures) here."),
) -> None:
    """Fit the calibrated score on this registry and check it on artefacts the fit never saw."""
    from app.core.files import atomic_write
    from app.embedding import create_encoder
    from app.jobs.calibration import FOLDS, fit_and_check, pack_rows
    from app.jobs.evaluate import PackError, read_jsonl
    from app.jobs.listing_transforms import registry_objects, write_pack
    from app.pipeline.calibrate import data_calibration_path

    settings = get_settings()
    folds = folds or FOLDS
    extra = list(packs or [])
    try:  # a bad pack is said before the long work starts
        for pack in extra:
            read_jsonl(pack / "references.jsonl")
            read_jsonl(pack / "queries.jsonl")
    except PackError as exc:
        fail(exc.message)
    names = [GENERATED_PACK] + [p.name for p in extra]
    if len(set(names)) < len(names):
        fail(f"two packs share a folder name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
             f"figures are kept per folder name, and {GENERATED_PACK} is the pack made from the registry")

    if not settings.data_dir.is_dir():
        fail(f"calibration needs at least {MIN_ARTEFACTS} registered artefacts with photos (found 0): there is no "
             f"registry at HM_DATA_DIR={settings.data_dir}")
    store = open_registry()
    try:
        with console.status("reading the registry's photos"):
            objects = registry_objects(store, limit)
    finally:
        store.close()
    n = len(objects)
    if n < MIN_ARTEFACTS:
        fail(f"calibration needs at least {MIN_ARTEFACTS} registered artefacts with photos (found {n}); the "
             f"registry is HM_DATA_DIR={settings.data_dir}")
    random.Random(seed).shuffle(objects)  # the held-out artefacts: a sample, not the newest
    holdout = max(1, round(holdout_share * n))
    n_twins = n - holdout if twins is None else min(twins, n - holdout)
    # Candidates are collected with the uncalibrated thresholds so no earlier fit colours them; the
    # evidence itself does not depend on the calibration.
    run_settings = settings.model_copy(update={"match_threshold": None, "possible_threshold": None})
    encoder = create_encoder(run_settings)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hm-calibrate-") as tmp:
        generated = Path(tmp) / GENERATED_PACK
        with console.status(f"making a listing-transforms pack of {n} artefacts"):
            made = write_pack(objects, generated, seed=seed, holdout=holdout, twins=n_twins)
        del objects
        console.print(f"{GENERATED_PACK}: {made['queries']} queries of {n} artefacts "
                      f"({holdout} held out of the registry, {made['twins']} near twins)")
        pack_info: dict[str, dict] = {}
        for pack in [generated, *extra]:
            found = _collect(pack, run_settings, encoder, pack_rows)
            console.print(f"{pack.name}: {len(found)} candidates")
            rows.extend(found)
            pack_info[pack.name] = {
                "candidates": len(found),
                "queries_sha256": hashlib.sha256((pack / "queries.jsonl").read_bytes()).hexdigest()[:16],
            }
        pack_info[GENERATED_PACK].update(
            {"made_from": "the registry of HM_DATA_DIR", "artefacts": n, "held_out": holdout,
             "twins": made["twins"], "queries": made["queries"], "seed": seed})
    options = ["--holdout-share", str(holdout_share), "--folds", str(folds), "--seed", str(seed)]
    options += (["--twins", str(twins)] if twins is not None else []) + (["--limit", str(limit)] if limit else [])
    options += [a for p in extra for a in ("--pack", p.name)]
    command = shlex.join(["heritage-match", "calibrate", *options])
    try:
        with console.status(f"fitting and checking ({folds}-fold, by artefact)"):
            cal = fit_and_check(rows, encoder.fingerprint, pack_info, command, folds, seed)
    except ValueError as exc:  # too few or too uniform candidates for a fit
        fail(f"the calibration cannot be fitted on these candidates ({exc}); nothing was stored")
    data = cal.to_json()
    text = json.dumps(data, indent=2) + "\n"
    if json_out is not None:
        atomic_write(json_out, text.encode())
    show(figures_table(cal.source.get("figures_held_out") or {}))
    console.print(f"thresholds: match at score >= {cal.match}, possible at >= {cal.possible}")
    if dry_run:
        console.print("dry run: the calibration was not stored")
        return
    out = data_calibration_path(settings.data_dir, encoder.fingerprint.name)
    atomic_write(out, text.encode())
    console.print(f"written: {out}\nIt is used for {encoder.fingerprint.id}; a running `heritage-match serve` "
                  "takes it up within seconds.")


def _collect(pack: Path, settings, encoder, pack_rows) -> list[dict]:
    """The pack's labelled candidates, with a progress bar (stderr) per stage."""
    with progress_bar() as progress:
        tasks: dict[str, TaskID] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(f"{pack.name}: {stage}", total=total)
            progress.update(tasks[stage], completed=done)

        return pack_rows(pack, settings, encoder, progress=report)


def _fraction(value) -> str:
    return "—" if value is None else f"{value:.1%}"


# The held-out figures the table shows: (label, how a pack's figures give it).
ROWS = (
    ("queries of registered artefacts", lambda f: str(f.get("queries", "—"))),
    ("recall@1 (right artefact first)", lambda f: _fraction(f.get("recall@1"))),
    ("match recall (right artefact called match)", lambda f: _fraction(f.get("match_recall"))),
    ("false matches / open-set queries", lambda f: f"{f.get('false_matches', '—')} / {f.get('open_set_queries', '—')}"),
    ("false-match rate", lambda f: _fraction(f.get("false_match_rate"))),
    ("false-match rate, 95% upper bound", lambda f: _fraction(f.get("false_match_rate_upper95"))),
    ("wrong first answers called match", lambda f: str(f.get("wrong_first_answer_match", "—"))),
)


def figures_table(figures: dict[str, dict]) -> Table:
    """Held-out figures, a column per pack: how often the right artefact comes first and is called
    ``match``, and how often an unregistered object or a near twin is called ``match``."""
    packs = [p for p in figures if not (p == "all" and len(figures) <= 2)]  # one pack: "all" says the same
    table = Table(title="Held out: each artefact's queries scored by a fit that never saw it")
    table.add_column("")
    for pack in packs:
        table.add_column(pack, justify="right")
    for label, value in ROWS:
        table.add_row(label, *(value(figures[p]) for p in packs))
    return table
