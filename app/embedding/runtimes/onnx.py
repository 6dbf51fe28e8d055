"""ONNX Runtime on CPU for the image encoder: an exported copy of a torch model's image tower.

``app.embedding.export`` writes ``<models dir>/onnx/<model>.onnx`` (or ``.int8.onnx``) beside a JSON
sidecar (fingerprint and path of the source weights, preprocessing, cosine to torch at export).

``OnnxImageEncoder`` reads only the sidecar and the ``.onnx`` file: the CPU service reaches its first
embedding without importing torch (about 9 s of start-up on a 2-core machine).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import ModelUnavailable
from app.core.files import sha256_hex
from app.embedding.base import ImageEncoder, ModelFingerprint, file_sha256
from app.embedding.preprocess import Preprocessing

log = logging.getLogger(__name__)

ONNX_RUNTIMES = ("onnx", "onnx-int8")
EXPORT_RUNTIMES = ONNX_RUNTIMES + ("openvino",)  # runtimes that run an exported .onnx file
INPUT_NAME, OUTPUT_NAME = "pixels", "embedding"
# ONNX Runtime session option: worker threads go to sleep at the end of each run instead of spinning on.
SPINNING_STOP = "session.force_spinning_stop"


@dataclass(frozen=True)
class BatchRoute:
    """Where passes of at least ``min_images`` images go: the encoder ``load`` returns (looked up on the
    first such pass), or this one when it returns None. The factory sets it (``app.embedding``)."""

    load: Callable[[], ImageEncoder | None]
    min_images: int


def export_paths(models_dir: Path, model: str, runtime: str) -> tuple[Path, Path]:
    """(model file, sidecar) of ``model`` (an ``HM_MODEL`` spec) exported for ``runtime``."""
    if runtime not in EXPORT_RUNTIMES:
        raise ValueError(f"unknown ONNX runtime {runtime!r}: use one of {', '.join(EXPORT_RUNTIMES)}")
    # The spec may be a path: keep a readable part and make it unique with a hash of the whole.
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[-60:].strip("._")
    stem = f"{slug}-{sha256_hex(model.encode())[:10]}"
    suffix = ".int8.onnx" if runtime == "onnx-int8" else ".onnx"
    path = Path(models_dir) / "onnx" / (stem + suffix)
    if runtime == "openvino":  # OpenVINO compiles the fp32 file; its own check lives in its own sidecar
        return path, path.with_name(stem + ".openvino.json")
    return path, path.with_name(path.name + ".json")


def has_export(models_dir: Path, model: str, runtime: str) -> bool:
    path, sidecar = export_paths(models_dir, model, runtime)
    return path.is_file() and sidecar.is_file()


class OnnxImageEncoder(ImageEncoder):
    """An exported image encoder run by ONNX Runtime on CPU."""

    def __init__(self, path: Path, meta: dict, batch_size: int = 16, threads: int | None = None,
                 batches: BatchRoute | None = None):
        self.path = Path(path)
        self.meta = meta
        self.model = meta["model"]
        self.runtime = meta["runtime"]
        pre = self.meta["preprocessing"]
        super().__init__(
            Preprocessing(size=pre["size"], mode=pre["mode"], mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                          interpolation=pre["interpolation"]),
            device="cpu",
            batch_size=batch_size,
        )
        source = self.meta["source"]
        self.name = source["name"]
        self.dim = int(source["dim"])
        # The source model's cosine scale, used where the model has no fitted calibration.
        self.match_threshold = float(meta["match_threshold"])
        self.possible_threshold = float(meta["possible_threshold"])
        self.threads = threads
        self._session: Any = None  # an onnxruntime.InferenceSession once loaded
        self.batches = batches
        self._batch_encoder: ImageEncoder | None = None
        self._batch_lookup_done = False
        self._batch_lock = threading.Lock()

    @classmethod
    def from_models_dir(cls, model: str, models_dir: Path, runtime: str = "onnx", batch_size: int = 16,
                        threads: int | None = None) -> "OnnxImageEncoder":
        """The installed export of ``model`` for ``runtime``."""
        path, sidecar = export_paths(models_dir, model, runtime)
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            flag = " --int8" if runtime == "onnx-int8" else ""
            raise ModelUnavailable(
                f"No {runtime} export of {model} in {Path(models_dir) / 'onnx'}: run "
                f"`heritage-match models export{flag}` (with HM_MODEL={model}) or set HM_RUNTIME=torch."
            ) from exc
        return cls(path, meta, batch_size=batch_size, threads=threads)

    def weights_path(self) -> Path:
        return self.path

    @property
    def fingerprint(self) -> ModelFingerprint:
        if self._fingerprint is None:
            source = self.meta["source"]
            weights = Path(self.meta["source_weights_path"])
            # An export of weights that have since changed would give vectors of a model that no longer exists.
            if not weights.is_file() or file_sha256(weights) != source["weights_sha256"]:
                raise ModelUnavailable(
                    f"{self.path.name} was exported from {weights}, which is missing or has changed: run "
                    "`heritage-match models export` again."
                )
            self._fingerprint = ModelFingerprint(
                name=source["name"], weights_sha256=source["weights_sha256"],
                preprocessing=source["preprocessing"], dim=self.dim, runtime=self.runtime,
            )
        return self._fingerprint

    def _load(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise ModelUnavailable(f"{self.path} is missing: run `heritage-match models export`.")
        if file_sha256(self.path) != self.meta["onnx_sha256"]:
            raise ModelUnavailable(f"{self.path} does not match its sidecar: run `heritage-match models export`.")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads stop spinning when a run ends (they still spin between its operators):
        # otherwise they hold both cores for a while after the model, just when the search's keypoints
        # and verification run on the CPU. 12 MP int8 search 103 -> 94 ms, batches unchanged (BENCHMARKS).
        options.add_session_config_entry(SPINNING_STOP, "1")
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self.batches is not None and len(batch) >= self.batches.min_images:
            batch_encoder = self.batch_encoder()
            if batch_encoder is not None:
                return batch_encoder._forward(batch)
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})[0]

    def batch_encoder(self) -> ImageEncoder | None:
        """The encoder that runs this file's batches (``batches``), looked up once; None: this one."""
        if self.batches is None:
            return None
        if not self._batch_lookup_done:
            with self._batch_lock:
                if not self._batch_lookup_done:
                    self._batch_encoder = self.batches.load()
                    self._batch_lookup_done = True
        return self._batch_encoder
