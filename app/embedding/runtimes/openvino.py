"""OpenVINO on CPU for the image encoder, reading the fp32 ONNX export directly.

OpenVINO compiles the same ``.onnx`` file that ``HM_RUNTIME=onnx`` runs; ``app.embedding.export`` checks
its output against torch on real photos (cosine >= 0.9999, as for ONNX fp32) and records that in its
own sidecar (``<model>.openvino.json`` beside the ``.onnx``). Refused below the threshold, nothing is
written. Its vectors then share torch's fingerprint. Like the ONNX backend, it never imports torch.

Precision is pinned to f32: on CPUs with bf16 units OpenVINO would otherwise run in bf16 and drift.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

from app.core.errors import ModelUnavailable
from app.embedding.base import file_sha256
from app.embedding.runtimes.onnx import OnnxImageEncoder, export_paths

log = logging.getLogger(__name__)

RUNTIME = "openvino"
# LATENCY: one stream using every thread, best for one search at a time. THROUGHPUT: several streams,
# each running its share of a batch at once, best for batches (scans, index rebuilds).
HINTS = ("LATENCY", "THROUGHPUT")
# From this many images a forward pass goes to the throughput-compiled model (when the hint is adaptive),
# and an fp32 ONNX Runtime encoder sends its batches here (``app.embedding``).
THROUGHPUT_MIN_BATCH = 4


class _Compiled:
    """One compiled model and its idle infer requests (a request must not be shared between threads)."""

    def __init__(self, compiled):
        import openvino as ov

        self.model = compiled
        self.streams = max(1, int(compiled.get_property("NUM_STREAMS")))
        self._idle: list = []
        self._lock = threading.Lock()
        # OpenVINO's bindings set up their NumPy bridge on first use, under a lock that waits for the GIL:
        # two threads reading their first outputs at once deadlock. Set it up here, in one thread.
        ov.Tensor(np.zeros(1, np.float32)).data

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            request = self._idle.pop() if self._idle else self.model.create_infer_request()
        try:
            request.infer({0: batch})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        finally:
            with self._lock:
                self._idle.append(request)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.streams == 1 or len(batch) == 1:
            return self.infer(batch)
        # Each throughput stream runs one slice of the batch, all at once.
        parts = np.array_split(batch, min(self.streams, len(batch)))
        results: list = [None] * len(parts)
        errors: list[BaseException] = []

        def run_part(i: int) -> None:
            try:
                results[i] = self.infer(parts[i])
            except BaseException as exc:  # re-raised in the calling thread below
                errors.append(exc)

        threads = [threading.Thread(target=run_part, args=(i,)) for i in range(1, len(parts))]
        for t in threads:
            t.start()
        run_part(0)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return np.concatenate(results)


class OpenVinoImageEncoder(OnnxImageEncoder):
    """The fp32 ONNX export compiled by OpenVINO for the CPU.

    With no fixed ``hint`` it is compiled for latency (searches), and a second time for throughput
    the first time a batch of ``THROUGHPUT_MIN_BATCH`` or more arrives (index rebuilds, imports, scans):
    the start stays quick and batches get the faster plan. Both give the same vectors.
    """

    def __init__(self, path: Path, meta: dict, batch_size: int = 16, threads: int | None = None,
                 hint: str | None = None):
        super().__init__(path, meta, batch_size=batch_size, threads=threads)
        if hint is not None and hint not in HINTS:
            raise ValueError(f"unknown OpenVINO performance hint {hint!r}: use one of {', '.join(HINTS)}")
        self.hint = hint
        self._compiled: dict[str, _Compiled] = {}
        self._compile_lock = threading.Lock()

    @classmethod
    def from_models_dir(cls, model: str, models_dir: Path, runtime: str = RUNTIME, batch_size: int = 16,
                        threads: int | None = None, hint: str | None = None) -> "OpenVinoImageEncoder":
        path, sidecar = export_paths(models_dir, model, RUNTIME)
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"No OpenVINO check of {model} in {Path(models_dir) / 'onnx'}: run "
                f"`heritage-match models export --openvino` (with HM_MODEL={model}) or set HM_RUNTIME=torch."
            ) from exc
        return cls(path, meta, batch_size=batch_size, threads=threads, hint=hint)

    def _load(self) -> None:
        if not self.path.is_file():
            raise ModelUnavailable(f"{self.path} is missing: run `heritage-match models export --openvino`.")
        if file_sha256(self.path) != self.meta["onnx_sha256"]:
            raise ModelUnavailable(f"{self.path} does not match its sidecar: run "
                                   "`heritage-match models export --openvino`.")
        self._compiled_for(self.hint or "LATENCY")

    def _compiled_for(self, hint: str) -> _Compiled:
        compiled = self._compiled.get(hint)
        if compiled is None:
            with self._compile_lock:
                compiled = self._compiled.get(hint)
                if compiled is None:
                    compiled = self._compiled[hint] = _Compiled(self._compile(hint))
        return compiled

    def _compile(self, hint: str):
        import openvino as ov

        config: dict[str, str | int] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        cache = self._cache_dir()
        if cache is not None:
            config["CACHE_DIR"] = str(cache)
        return ov.Core().compile_model(str(self.path), "CPU", config)

    def _cache_dir(self) -> Path | None:
        """Where OpenVINO keeps its compiled plans, so that a restart loads one (0.25 s) instead of
        converting and compiling the ONNX file again (1.25 s for ViT-B-32; measured here on 2 cores).

        OpenVINO keys a cached plan by the file's path and the settings, not by its contents, so the
        folder is named after the file's SHA-256: a re-export can never load a stale plan. Each plan
        takes about the model's size on disk. Without a writable models folder, no cache."""
        cache = self.path.parent / "openvino-cache" / str(self.meta.get("onnx_sha256", ""))[:16]
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return cache if os.access(cache, os.W_OK) else None

    @property
    def streams(self) -> int:
        """Streams of the plan that batches run on (compiles it if needed)."""
        return self._compiled_for(self.hint or "THROUGHPUT").streams

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        hint = self.hint or ("THROUGHPUT" if len(batch) >= THROUGHPUT_MIN_BATCH else "LATENCY")
        return self._compiled_for(hint).run(batch)


def throughput_encoder_for(onnx: OnnxImageEncoder) -> OpenVinoImageEncoder | None:
    """OpenVINO's throughput plan of an fp32 export, where `models export --openvino` checked this very
    file; None where it did not, or where OpenVINO cannot load it (ONNX Runtime then runs the batches)."""
    _, sidecar = export_paths(onnx.path.parent.parent, onnx.model, RUNTIME)
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("onnx_sha256") != onnx.meta["onnx_sha256"]:
        return None  # checked on another export of this model: not this file
    try:
        return OpenVinoImageEncoder(onnx.path, meta, batch_size=onnx.batch_size, threads=onnx.threads,
                                    hint="THROUGHPUT").load()
    except Exception as exc:  # OpenVINO missing or failing: ONNX Runtime runs the batches as before
        log.warning("batches stay on ONNX Runtime: OpenVINO could not load %s (%s)", onnx.path.name, exc)
        return None
