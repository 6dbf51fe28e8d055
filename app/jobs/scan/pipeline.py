"""The local engine: decode in a process pool while this process embeds and searches.

Photos of the next groups are decoded (JPEG draft decode, in worker processes) while the current
group is searched here, so decode overlaps inference. At most ``ahead`` groups are in flight, which
bounds memory whatever the dump's size.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterable

from app.jobs.scan.sources import ImageSource
from app.jobs.scan.work import (
    DecodeConfig,
    Group,
    GroupResult,
    decode_ref,
    search_group,
    single_threaded_decode_process,
)
from app.pipeline.decode import DecodedImage

if TYPE_CHECKING:  # the decode workers import this module too: no model or registry for them
    from app.service import MatchingService


def default_workers() -> int:
    # One core stays with torch; decoding takes the rest.
    return max(1, (os.cpu_count() or 2) - 1)


class LocalEngine:
    name = "local"

    def __init__(self, service: MatchingService, workers: int | None = None, ahead: int = 4):
        self.service = service
        self.workers = workers or default_workers()
        self.ahead = max(1, ahead)

    def run(self, groups: Iterable[Group], source: ImageSource, cfg: DecodeConfig, top_k: int, min_verdict: str,
            emit: Callable[[GroupResult], None]) -> None:
        # spawn: the workers need only PIL, not a copy of this process's torch threads and model.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(source, cfg)) as pool:
            in_flight: deque[tuple[Group, dict[tuple[int, int], Future]]] = deque()

            def finish_oldest():
                group, futures = in_flight.popleft()
                decoded = {key: f.result() for key, f in futures.items()}
                emit(search_group(self.service, group, decoded, top_k, min_verdict, cfg.archive_copy_px))

            for group in groups:
                futures = {(seq, i): pool.submit(_decode_in_worker, ref) for seq, i, ref in group.image_jobs()}
                in_flight.append((group, futures))
                if len(in_flight) > self.ahead:
                    finish_oldest()
            while in_flight:
                finish_oldest()


# Each worker keeps its own source (open archive handles) and settings for all its jobs.
_worker_state: tuple[ImageSource, DecodeConfig] | None = None


def _init_worker(source: ImageSource, cfg: DecodeConfig) -> None:
    global _worker_state
    _worker_state = (source, cfg)
    single_threaded_decode_process()
    _leave_with_parent(os.getppid())


def _leave_with_parent(parent: int, every_s: float = 1.0) -> None:
    """A scan killed outright (SIGKILL, the OOM killer) cannot stop its decode workers, which would
    wait forever for work: each watches its parent and leaves once it is gone (re-parented)."""

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _decode_in_worker(ref: str) -> tuple[DecodedImage | None, str | None]:
    assert _worker_state is not None  # set by _init_worker, the pool's initializer
    source, cfg = _worker_state
    return decode_ref(source, ref, cfg)
