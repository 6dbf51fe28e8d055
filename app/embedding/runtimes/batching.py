"""Dynamic micro-batching: embed calls from concurrent API requests share one forward pass.

FastAPI runs the search route in a thread pool, so concurrent searches call ``embed`` from several
threads at once. Run separately, their forward passes compete for the same cores (each runtime
spreads one pass over every core) and each pays the per-call overhead of a small batch. The
``BatchingEncoder`` queues each call's preprocessed pixels; one worker thread takes the oldest request
with every queued one that fits (up to ``max_batch`` images), runs them as one batch and hands every
caller exactly its own rows. Requests that arrive while a batch runs join the next one.

Before running a batch the worker waits, at most ``wait_ms``, for callers that have already entered
``embed`` and are still preprocessing: concurrent searches reach the model a few milliseconds apart.
It never waits when no other caller is in sight, so a search alone is not slowed at all.

Preprocessing stays in the caller's thread (it runs in parallel and its errors stay with their
caller); a call with more images than ``max_batch`` (an index rebuild) goes straight to the wrapped
encoder, which preprocesses it chunk by chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from app.embedding.base import ImageEncoder, ModelFingerprint
from app.embedding.preprocess import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class _Request:
    pixels: np.ndarray  # (n, 3, H, W) float32, preprocessed in the caller's thread
    result: Future = field(default_factory=Future)


class BatchingEncoder(ImageEncoder):
    """Wraps an image encoder so that concurrent ``embed`` calls are merged into batches."""

    def __init__(self, inner: ImageEncoder, wait_ms: float = 5.0, max_batch: int = 16):
        # No ImageEncoder.__init__: the model, its preprocessing and its lock are the wrapped encoder's.
        if max_batch < 1 or wait_ms < 0:
            raise ValueError("max_batch must be at least 1 and wait_ms at least 0")
        self.inner = inner
        self.wait_s = wait_ms / 1000.0
        self.max_batch = max_batch
        self._requests: deque[_Request] = deque()
        self._preparing = 0  # callers between entering embed and queueing their pixels
        self._cond = threading.Condition()  # guards the three fields above and the two below
        self._worker: threading.Thread | None = None
        self._closed = False
        self.batch_sizes: list[int] = []  # images per forward pass the worker ran, newest last (bounded)

    # --- the wrapped encoder's identity ----------------------------------------------------------

    @property
    def name(self) -> str:  # type: ignore[override]  # read-only: the wrapped encoder's
        return self.inner.name

    @property
    def dim(self) -> int:  # type: ignore[override]  # read-only: the wrapped encoder's
        return self.inner.dim

    @property
    def match_threshold(self) -> float:  # type: ignore[override]  # read-only: the wrapped encoder's
        return self.inner.match_threshold

    @property
    def possible_threshold(self) -> float:  # type: ignore[override]  # read-only: the wrapped encoder's
        return self.inner.possible_threshold

    @property
    def preprocessing(self) -> Preprocessing:  # type: ignore[override]  # read-only: the wrapped encoder's
        return self.inner.preprocessing

    @property
    def device(self) -> str:  # type: ignore[override]  # read-only: the wrapped encoder's
        return self.inner.device

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.inner.batch_size = value

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self.inner.fingerprint

    def weights_path(self) -> Path:
        return self.inner.weights_path()

    def _load(self) -> None:
        self.inner.load()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self.inner._forward(batch)

    def export_module(self):
        return self.inner.export_module()

    def load(self) -> "BatchingEncoder":
        self.inner.load()
        return self

    def __getattr__(self, name: str):
        # Backend-specific attributes (an ONNX encoder's runtime, a torch encoder's module) are the inner one's.
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    # --- embedding -------------------------------------------------------------------------------

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        if len(images) > self.max_batch:
            return self.inner.embed(images)  # chunked preprocessing keeps a large request's memory bounded
        self.inner.load()  # loads in this thread, so a load error reaches this caller
        with self._cond:
            closed = self._closed
            if not closed:
                self._preparing += 1  # a batch about to run waits for this caller (at most wait_ms)
        if closed:  # after close(): no worker to batch with, embed directly
            return self.inner.embed(images)
        try:
            request = _Request(self.preprocessing.batch(images))
        except BaseException:
            with self._cond:
                self._preparing -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._preparing -= 1
            self._requests.append(request)
            self._ensure_worker()
            self._cond.notify_all()
        return request.result.result()

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.inner.embed_pixels(pixels)

    def close(self, timeout: float = 30.0) -> None:
        """Finish the requests already queued and stop the worker; later calls embed directly."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            self._cond.notify_all()
        if worker is not None:
            worker.join(timeout)

    def _ensure_worker(self) -> None:  # under the lock
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
            self._worker.start()

    def _next_batch(self) -> list[_Request] | None:
        """The next batch: the oldest request, those queued behind it that fit, and those of callers still
        preparing their images if they come within ``wait_ms``. None once closed with nothing left."""
        with self._cond:
            while not self._requests:
                if self._closed and not self._preparing:
                    return None
                self._cond.wait()
            batch = [self._requests.popleft()]
            rows = len(batch[0].pixels)
            deadline = time.monotonic() + self.wait_s
            while True:
                while self._requests and rows + len(self._requests[0].pixels) <= self.max_batch:
                    batch.append(self._requests.popleft())
                    rows += len(batch[-1].pixels)
                if rows >= self.max_batch or self._requests:  # full, or the next request starts the next batch
                    return batch
                # Wait only for callers already preparing theirs: a caller alone never waits.
                remaining = deadline - time.monotonic()
                if not self._preparing or remaining <= 0:
                    return batch
                self._cond.wait(remaining)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Request]) -> None:
        try:
            vectors = self.inner.embed_pixels(np.concatenate([r.pixels for r in batch]))
        except BaseException as exc:  # the worker must survive and every caller must get an answer
            if len(batch) == 1:
                batch[0].result.set_exception(exc)
                return
            # Which caller's input failed is unknown: run each alone so the error reaches only its own.
            log.debug("batch of %d requests failed (%s): retrying one by one", len(batch), exc)
            for request in batch:
                self._run_batch([request])
            return
        self.batch_sizes = (self.batch_sizes + [len(vectors)])[-1000:]
        start = 0
        for request in batch:
            n = len(request.pixels)
            request.result.set_result(vectors[start : start + n].copy())
            start += n
