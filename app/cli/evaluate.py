"""``evaluate``: retrieval figures on a benchmark pack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import TaskID

from app.cli.console import progress_bar
from app.core.config import get_settings


def evaluate(
    pack: Path = typer.Argument(..., exists=True, file_okay=False, help="Benchmark pack folder."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this file."),
    show_failures: bool = typer.Option(False, "--failures", help="Keep the list of failed queries in the output."),
    report_out: Optional[Path] = typer.Option(None, "--report", help="Write an HTML report with every failure."),
    candidates_out: Optional[Path] = typer.Option(
        None, "--candidates", help="Write every returned candidate with its evidence (JSONL; calibration data)."
    ),
) -> None:
    """Measure recall@1/5/10, mAP, open-set rates and latency on a benchmark pack."""
    from app.jobs.evaluate import evaluate_pack, write_report

    with progress_bar() as progress:
        tasks: dict[str, TaskID] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done)

        result = evaluate_pack(pack, get_settings(), progress=report)
    if report_out:
        write_report(result, pack, report_out)
    candidates = result.pop("candidates")
    if candidates_out:
        candidates_out.parent.mkdir(parents=True, exist_ok=True)
        candidates_out.write_text("".join(json.dumps(c) + "\n" for c in candidates), encoding="utf-8")
    if not show_failures:
        result["failures"] = len(result["failures"])
    text = json.dumps(result, indent=2)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    print(text)
