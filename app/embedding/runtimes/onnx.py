"""ONNX Runtime on CPU for the image encoder: an exported copy of a torch model's image tower.

``export_onnx`` writes ``<models dir>/onnx/<model>.onnx`` (or ``.int8.onnx``) beside a JSON sidecar
that records the fingerprint and path of the weights it came from, the preprocessing and the cosine
to torch measured at export on real photos. An export below ``FP32_MIN_COSINE`` / ``INT8_MIN_COSINE``
is refused and nothing is written.

``OnnxImageEncoder`` reads only the sidecar and the ``.onnx`` file: the CPU service reaches its first
embedding without importing torch (about 9 s of start-up on a 2-core machine).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from app.embedding.base import ImageEncoder, ModelFingerprint, file_sha256
from app.embedding.preprocess import Preprocessing
from app.core.errors import ModelUnavailable

log = logging.getLogger(__name__)

ONNX_RUNTIMES = ("onnx", "onnx-int8")
EXPORT_RUNTIMES = ONNX_RUNTIMES + ("openvino",)  # runtimes that run an exported .onnx file
FP32_MIN_COSINE = 0.9999
INT8_MIN_COSINE = 0.999
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "pixels", "embedding"
BATCH_MIN_IMAGES = 4  # from this many images in one pass, an fp32 export runs on OpenVINO's throughput plan
# ONNX Runtime session option: worker threads go to sleep at the end of each run instead of spinning on.
SPINNING_STOP = "session.force_spinning_stop"
# Per-channel weights with a 7-bit range: the default int8 settings (per tensor, full range) drift to
# cosine 0.979 on AVX2 CPUs, whose u8 x s8 kernels can saturate.
INT8_SETTINGS = {"per_channel": True, "reduce_range": True, "weight_type": "QInt8"}


class ExportRefused(ValueError):
    """The exported model does not reproduce torch's embeddings closely enough."""


def check_parity(cosines: np.ndarray, required: float, what: str) -> dict:
    """The parity record of an export, from its per-photo cosines to torch; refuses it below ``required``."""
    if cosines.min() < required:
        raise ExportRefused(
            f"{what} reaches cosine {cosines.min():.5f} to torch on {len(cosines)} photos, "
            f"below the required {required}: not installed."
        )
    return {"images": len(cosines), "cosine_min": float(cosines.min()), "cosine_mean": float(cosines.mean()),
            "required": required}


def export_paths(models_dir: Path, model: str, runtime: str) -> tuple[Path, Path]:
    """(model file, sidecar) of ``model`` (an ``HM_MODEL`` spec) exported for ``runtime``."""
    if runtime not in EXPORT_RUNTIMES:
        raise ValueError(f"unknown ONNX runtime {runtime!r}: use one of {', '.join(EXPORT_RUNTIMES)}")
    # The spec may be a path: keep a readable part and make it unique with a hash of the whole.
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[-60:].strip("._")
    stem = f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:10]}"
    suffix = ".int8.onnx" if runtime == "onnx-int8" else ".onnx"
    path = Path(models_dir) / "onnx" / (stem + suffix)
    if runtime == "openvino":  # OpenVINO compiles the fp32 file; its own check lives in its own sidecar
        return path, path.with_name(stem + ".openvino.json")
    return path, path.with_name(path.name + ".json")


def has_export(models_dir: Path, model: str, runtime: str) -> bool:
    path, sidecar = export_paths(models_dir, model, runtime)
    return path.is_file() and sidecar.is_file()


def parity_images() -> list[Image.Image]:
    """Real photographs (scikit-image's bundled public-domain ones) and crops of them."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.coins()]
    images = [Image.fromarray(p).convert("RGB") for p in photos]
    crops = [img.crop((img.width // 4, img.height // 4, img.width * 3 // 4, img.height * 3 // 4)) for img in images]
    return images + crops


class OnnxImageEncoder(ImageEncoder):
    """An exported image encoder run by ONNX Runtime on CPU."""

    def __init__(self, path: Path, meta: dict, batch_size: int = 16, threads: int | None = None,
                 batches_on_openvino: bool = True):
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
        self._session = None
        # fp32 only: batches go to OpenVINO's throughput plan of this same file where it was checked.
        self.batches_on_openvino = batches_on_openvino and self.runtime == "onnx"
        self._batch_encoder = None
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
        if len(batch) >= BATCH_MIN_IMAGES and self.batches_on_openvino:
            batch_encoder = self.batch_encoder()
            if batch_encoder is not None:
                return batch_encoder._forward(batch)
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})[0]

    def batch_encoder(self):
        """OpenVINO's throughput plan of this fp32 file, where `models export --openvino` checked it, else None.

        Batches (index rebuilds, imports, scans) measured faster on it than on ONNX Runtime on a 2-core
        CPU (docs/BENCHMARKS.md); its vectors are torch's within the same cosine, so nothing else changes.
        """
        if not self._batch_lookup_done:
            with self._batch_lock:
                if not self._batch_lookup_done:
                    self._batch_encoder = self._find_batch_encoder()
                    self._batch_lookup_done = True
        return self._batch_encoder

    def _find_batch_encoder(self):
        _, sidecar = export_paths(self.path.parent.parent, self.model, "openvino")
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("onnx_sha256") != self.meta["onnx_sha256"]:
            return None  # checked on another export of this model: not this file
        try:
            from app.embedding.runtimes.openvino import OpenVinoImageEncoder

            return OpenVinoImageEncoder(self.path, meta, batch_size=self.batch_size, threads=self.threads,
                                        hint="THROUGHPUT").load()
        except Exception as exc:  # OpenVINO missing or failing: ONNX Runtime runs the batches as before
            log.warning("batches stay on ONNX Runtime: OpenVINO could not load %s (%s)", self.path.name, exc)
            return None


def export_onnx(source: ImageEncoder, model: str, models_dir: Path, int8: bool = False,
                images: list[Image.Image] | None = None) -> dict:
    """Export ``source`` (a torch encoder of ``model``), check it against torch, install it; returns the sidecar.

    Raises ExportRefused, writing nothing, when the exported model's cosine to torch is too low.
    """
    import torch

    runtime = "onnx-int8" if int8 else "onnx"
    threshold = INT8_MIN_COSINE if int8 else FP32_MIN_COSINE
    path, sidecar = export_paths(models_dir, model, runtime)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fp32_tmp = path.with_name(f".{path.name}.{os.getpid()}.fp32.tmp")
    images = images or parity_images()
    try:
        module = source.export_module().to("cpu").eval()
        size = source.preprocessing.size
        dummy = torch.zeros(2, 3, size, size)
        # Traced with autograd on: under no_grad nn.MultiheadAttention takes its fused fast path,
        # whose operator ONNX does not have.
        torch.onnx.export(
            module, (dummy,), str(fp32_tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=OPSET,
            dynamo=False,  # the classic exporter: one self-contained file, no onnxscript rewrite
        )
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32_tmp), str(tmp), per_channel=INT8_SETTINGS["per_channel"],
                             reduce_range=INT8_SETTINGS["reduce_range"], weight_type=QuantType.QInt8)
        else:
            os.replace(fp32_tmp, tmp)
        fp = source.fingerprint
        pre = source.preprocessing
        meta = {
            "model": model,
            "runtime": runtime,
            "source": fp.as_dict(),
            "source_weights_path": str(Path(source.weights_path()).resolve()),
            "preprocessing": {"size": pre.size, "mode": pre.mode, "mean": list(pre.mean), "std": list(pre.std),
                              "interpolation": pre.interpolation},
            "match_threshold": source.match_threshold,
            "possible_threshold": source.possible_threshold,
            "onnx_sha256": _sha256(tmp),
            "opset": OPSET,
            "quantisation": INT8_SETTINGS if int8 else None,
        }
        exported = OnnxImageEncoder(tmp, meta, batch_size=source.batch_size, batches_on_openvino=False)
        expected = source.embed(images)
        got = exported.embed(images)
        meta["parity"] = check_parity(np.sum(expected * got, axis=1), threshold, f"{runtime} export of {model}")
        os.replace(tmp, path)
        file_sha256(path)  # leaves the hash cached beside a large file, so the first start does not hash it
        tmp_meta = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_meta, sidecar)
        log.info("exported %s to %s (cosine to torch >= %.5f)", model, path, meta["parity"]["cosine_min"])
        return meta
    finally:
        # Loading the temp file for the parity check may have cached its hash beside it.
        for leftover in (tmp, fp32_tmp, tmp.with_name(tmp.name + ".sha256.json")):
            leftover.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
