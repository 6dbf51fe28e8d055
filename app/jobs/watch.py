"""``heritage-match watch DIR``: a marketplace's daily export becomes alerts without anyone running commands.

Each dump file that lands in the folder (JSONL, CSV, .zip, .tar, .tar.gz: what ``scan`` reads) is scanned
once it has stopped changing, into ``OUT/<file name>-<first 12 hex of its SHA-256>/``, with listings the
archive already holds skipped. A file's scan keeps its checkpoint, so a watch stopped mid-file resumes it
at the next start; a finished one is not scanned again.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from app.core.config import Settings
from app.core.files import private_dir, sha256_file
from app.jobs.scan.runner import NoProgress, Progress, ScanOptions, ScanSummary, run_scan
from app.service import MatchingService

DUMP_SUFFIXES = (".jsonl", ".csv", ".zip", ".tar", ".tgz", ".tar.gz")


class FolderWatch:
    def __init__(self, folder: Path, out: Path, settings: Settings, service: MatchingService, *,
                 min_verdict: str = "possible", fetch: bool = False, workers: int | None = None,
                 settle_s: float = 5.0):
        self.folder = Path(folder)
        self.out = private_dir(Path(out))
        self.settings = settings
        self.service = service
        self.min_verdict = min_verdict
        self.fetch = fetch
        self.workers = workers
        self.settle_s = settle_s
        self._seen: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, first time seen so)
        self._finished: set[str] = set()  # output folders of finished scans, this run
        self._digests: dict[tuple[Path, int, int], str] = {}
        self._stop = threading.Event()

    def ready(self) -> list[Path]:
        """Dump files not yet scanned that have not changed for ``settle_s`` (a copy still being written
        is left for a later look), oldest first."""
        now = time.monotonic()
        ready = []
        for path in sorted(self.folder.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name)):
            if not path.is_file() or path.name.startswith(".") or not path.name.lower().endswith(DUMP_SUFFIXES):
                continue
            st = path.stat()
            size_time = (st.st_size, st.st_mtime_ns)
            before = self._seen.get(path)
            if before is None or before[:2] != size_time:
                self._seen[path] = (*size_time, now)
                if self.settle_s > 0:
                    continue
                before = self._seen[path]
            if now - before[2] < self.settle_s:
                continue
            if self._scan_dir(path).name in self._finished:
                continue
            ready.append(path)
        return ready

    def scan(self, path: Path, progress: Progress | None = None) -> ScanSummary:
        out = self._scan_dir(path)
        options = ScanOptions(dump=path, out=out, resume=True, min_verdict=self.min_verdict, fetch=self.fetch,
                              workers=self.workers, skip_archived=True)
        summary = run_scan(options, self.settings, service=self.service, progress=progress or NoProgress())
        self._finished.add(out.name)
        return summary

    def sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def stop(self) -> None:
        self._stop.set()

    def _scan_dir(self, path: Path) -> Path:
        st = path.stat()
        key = (path, st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = sha256_file(path)[:12]
        return self.out / f"{path.name}-{self._digests[key]}"
