"""The scan's checkpoint in its output folder: what dump and settings it is for, and which groups
of listings are finished (an append-only log, fsynced after the outputs of those groups)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from app.core.files import atomic_write, private_opener

STATE_FILE = "scan-state.json"
DONE_FILE = "scan-done.log"
# Settings that change the outputs: a resumed scan must use the same ones.
PINNED = ("identity", "group_size", "model", "top_k", "min_verdict", "max_line_kb", "max_images_per_listing")
# Pinned since a later version: a checkpoint written before them is resumed with the current values.
PINNED_LATER = ("max_line_kb", "max_images_per_listing")


@dataclass
class GroupStats:
    group: int
    listings: int = 0
    images: int = 0
    image_errors: int = 0
    row_errors: int = 0


class Checkpoint:
    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        self.state_path = self.dir / STATE_FILE
        self.done_path = self.dir / DONE_FILE
        self._log: TextIO | None = None

    def state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None

    def write_state(self, state: dict) -> None:
        atomic_write(self.state_path, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())

    def done(self) -> dict[int, GroupStats]:
        """Finished groups; a line torn by a kill is ignored (its group is simply redone)."""
        found: dict[int, GroupStats] = {}
        try:
            with open(self.done_path, encoding="utf-8") as f:
                for line in f:
                    if not line.endswith("\n"):
                        break
                    try:
                        stats = GroupStats(**json.loads(line))
                    except (ValueError, TypeError):
                        continue
                    found[stats.group] = stats
        except FileNotFoundError:
            pass
        return found

    def record(self, finished: list[GroupStats]) -> None:
        """Append finished groups and fsync: call only after their outputs are on disk."""
        if self._log is None:
            self._log = open_append(self.done_path)
        for stats in finished:
            self._log.write(json.dumps(asdict(stats), separators=(",", ":")) + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def open_append(path: Path) -> TextIO:
    """Open for appending after cutting a line torn by a kill, so the next line starts clean."""
    path = Path(path)
    if path.exists():
        with open(path, "rb+") as f:
            data_end = f.seek(0, os.SEEK_END)
            keep = data_end
            while keep > 0:
                f.seek(max(0, keep - 65536))
                chunk = f.read(keep - max(0, keep - 65536))
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    keep = max(0, keep - len(chunk)) + nl + 1
                    break
                keep = max(0, keep - len(chunk))
            if keep != data_end:
                f.truncate(keep)
    # backslashreplace: a file name that is not UTF-8 (kept as surrogates) is written as \udcXX, not a crash
    return open(path, "a", encoding="utf-8", errors="backslashreplace", opener=private_opener)
