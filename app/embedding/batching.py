"""Dynamic micro-batching: embed calls from concurrent API requests share one forward pass.

FastAPI runs the search route in a thread pool, so concurrent searches call ``embed`` from several
threads at once. Run separately, their forward passes compete for the same cores (each runtime
spreads one pass over every core) and each pays the per-call overhead of a batch of one. The
``BatchingEncoder`` puts each call's preprocessed pixels on a queue; one worker thread takes the first
request, waits at most ``wait_ms`` for others (up to ``max_batch`` images in all), runs them as one
batch and hands every caller its own rows. Requests that arrive while a batch runs are merged into the
next one without any wait, so even ``wait_ms=0`` batches under load.

Preprocessing stays in the caller's thread (it runs in parallel and its errors stay with their
caller); a call with more images than ``max_batch`` (an index rebuild) goes straight to the wrapped
encoder, which preprocesses it chunk by chunk.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from app.embedding.base import ImageEncoder, ModelFingerprint
from app.embedding.preprocess import Preprocessing

log = logging.getLogger(__name__)

_STOP = object()  # tells the worker to finish the batch in hand and exit


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
        self._queue: queue.Queue = queue.Queue()
        self._state_lock = threading.Lock()  # orders enqueueing against close()
        self._worker: threading.Thread | None = None
        self._closed = False
        self.batch_sizes: list[int] = []  # images per forward pass the worker ran, newest last (bounded)

    # --- the wrapped encoder's identity ----------------------------------------------------------

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def match_threshold(self) -> float:
        return self.inner.match_threshold

    @property
    def possible_threshold(self) -> float:
        return self.inner.possible_threshold

    @property
    def preprocessing(self) -> Preprocessing:
        return self.inner.preprocessing

    @property
    def device(self) -> str:
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
        pixels = self.preprocessing.batch(images)
        request = _Request(pixels)
        with self._state_lock:
            if self._closed:
                queued = False
            else:
                self._ensure_worker()
                self._queue.put(request)
                queued = True
        if not queued:  # after close(): no worker to batch with, embed directly
            return self.inner.embed_pixels(pixels)
        return request.result.result()

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.inner.embed_pixels(pixels)

    def close(self, timeout: float = 30.0) -> None:
        """Finish the requests already queued and stop the worker; later calls embed directly."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            if worker is not None:
                self._queue.put(_STOP)
        if worker is not None:
            worker.join(timeout)

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        carried = None
        while True:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is _STOP:
                return
            batch, rows, stop = [first], len(first.pixels), False
            deadline = time.monotonic() + self.wait_s
            while rows < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if rows + len(item.pixels) > self.max_batch:
                    carried = item  # starts the next batch
                    break
                batch.append(item)
                rows += len(item.pixels)
            self._run_batch(batch)
            if stop:
                return

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
