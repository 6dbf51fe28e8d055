"""OpenVINO on CPU for the image encoder, reading the fp32 ONNX export directly.

OpenVINO compiles the same ``.onnx`` file that ``HM_RUNTIME=onnx`` runs; ``export_openvino`` checks
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
from PIL import Image

from app.embedding.base import ImageEncoder, file_sha256
from app.embedding.onnx_runtime import (
    FP32_MIN_COSINE, ExportRefused, OnnxImageEncoder, export_onnx, export_paths, has_export, parity_images,
)
from app.errors import ModelUnavailable

log = logging.getLogger(__name__)

RUNTIME = "openvino"
# LATENCY: one stream using every thread, best for one search at a time. THROUGHPUT: several streams,
# each running its share of a batch at once, best for batches (scans, index rebuilds).
HINTS = ("LATENCY", "THROUGHPUT")


class OpenVinoImageEncoder(OnnxImageEncoder):
    """The fp32 ONNX export compiled by OpenVINO for the CPU."""

    def __init__(self, path: Path, meta: dict, batch_size: int = 16, threads: int | None = None,
                 hint: str = "LATENCY"):
        super().__init__(path, meta, batch_size=batch_size, threads=threads)
        if hint not in HINTS:
            raise ValueError(f"unknown OpenVINO performance hint {hint!r}: use one of {', '.join(HINTS)}")
        self.hint = hint
        self._compiled = None
        self._requests: list = []  # idle infer requests: one request is not safe to share between threads
        self._requests_lock = threading.Lock()
        self.streams = 1

    @classmethod
    def from_models_dir(cls, model: str, models_dir: Path, runtime: str = RUNTIME, batch_size: int = 16,
                        threads: int | None = None, hint: str = "LATENCY") -> "OpenVinoImageEncoder":
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
        import openvino as ov

        if not self.path.is_file():
            raise ModelUnavailable(f"{self.path} is missing: run `heritage-match models export --openvino`.")
        if file_sha256(self.path) != self.meta["onnx_sha256"]:
            raise ModelUnavailable(f"{self.path} does not match its sidecar: run "
                                   "`heritage-match models export --openvino`.")
        config = {"PERFORMANCE_HINT": self.hint, "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        core = ov.Core()
        self._compiled = core.compile_model(str(self.path), "CPU", config)
        self.streams = max(1, int(self._compiled.get_property("NUM_STREAMS")))

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        if self.streams == 1 or len(batch) == 1:
            return self._infer(batch)
        # Throughput streams each run one slice of the batch, all at once.
        parts = np.array_split(batch, min(self.streams, len(batch)))
        results: list[np.ndarray | None] = [None] * len(parts)
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                results[i] = self._infer(parts[i])
            except BaseException as exc:  # re-raised in the calling thread below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(1, len(parts))]
        for t in threads:
            t.start()
        run(0)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return np.concatenate(results)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with self._requests_lock:
            request = self._requests.pop() if self._requests else self._compiled.create_infer_request()
        try:
            request.infer({0: batch})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        finally:
            with self._requests_lock:
                self._requests.append(request)


def export_openvino(source: ImageEncoder, model: str, models_dir: Path,
                    images: list[Image.Image] | None = None) -> dict:
    """Check OpenVINO on the fp32 ONNX export of ``source`` against torch, record it; returns the sidecar.

    Makes the fp32 ONNX export first if it is missing. Raises ExportRefused, writing nothing, when
    OpenVINO's cosine to torch is below ``FP32_MIN_COSINE``.
    """
    if not has_export(models_dir, model, "onnx"):
        export_onnx(source, model, models_dir)
    path, onnx_sidecar = export_paths(models_dir, model, "onnx")
    _, sidecar = export_paths(models_dir, model, RUNTIME)
    meta = {**json.loads(onnx_sidecar.read_text()), "runtime": RUNTIME}
    if meta["source"]["weights_sha256"] != source.fingerprint.weights_sha256:  # an export of older weights
        export_onnx(source, model, models_dir)
        meta = {**json.loads(onnx_sidecar.read_text()), "runtime": RUNTIME}
    images = images or parity_images()
    compiled = OpenVinoImageEncoder(path, meta, batch_size=source.batch_size)
    expected = source.embed(images)
    got = compiled.embed(images)
    cosines = np.sum(expected * got, axis=1)
    meta["parity"] = {"images": len(images), "cosine_min": float(cosines.min()),
                      "cosine_mean": float(cosines.mean()), "required": FP32_MIN_COSINE}
    if cosines.min() < FP32_MIN_COSINE:
        raise ExportRefused(
            f"OpenVINO on the export of {model} reaches cosine {cosines.min():.5f} to torch on {len(images)} photos, "
            f"below the required {FP32_MIN_COSINE}: not installed."
        )
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, sidecar)
    log.info("OpenVINO runs %s from %s (cosine to torch >= %.5f)", model, path, cosines.min())
    return meta
