"""What every command shares: the console (stderr), errors, progress bars, and the service and registry openers."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from app.core.config import get_settings
from app.core.files import private_data_dir

if TYPE_CHECKING:
    from app.registry.store import RegistryStore
    from app.service import MatchingService

console = Console(stderr=True)  # messages and progress; stdout carries only a command's output


def fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def show(table: Table) -> None:
    """Print a table on stdout: it is the command's output."""
    Console().print(table)


def open_service(start: bool = True) -> MatchingService:
    from app.service import MatchingService

    service = MatchingService(get_settings())
    return service.start() if start else service


def open_registry() -> RegistryStore:
    """The registry database alone (keys, audit): no model is loaded."""
    from app.registry.store import RegistryStore

    settings = get_settings()
    private_data_dir(settings.data_dir)
    return RegistryStore(settings.db_url, settings.data_dir / "photos", photo_store=settings.photo_store)


def progress_bar() -> Progress:
    """Bars that vanish when done, one task each."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


class ScanProgressBar:
    """A scan's progress (``app.jobs.scan.runner.Progress``): listings done, photos a second; use it as a
    context manager around the scan."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console)
        self.task: TaskID | None = None
        self.t0 = 0.0
        self.images = 0

    def __enter__(self) -> ScanProgressBar:
        self.bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.stop()

    def start(self, total: int, done: int) -> None:
        self.t0 = time.perf_counter()
        self.task = self.bar.add_task("listings", total=total, completed=done, rate="")

    def advance(self, listings: int, images: int) -> None:
        assert self.task is not None, "advance() before start()"
        self.images += images
        rate = self.images / max(1e-9, time.perf_counter() - self.t0)
        self.bar.update(self.task, advance=listings, rate=f"{rate:.1f} images/s")
