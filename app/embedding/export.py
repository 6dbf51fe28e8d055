"""Exporting a torch image encoder for the CPU runtimes, and checking the export against torch.

``export_onnx`` writes ``<models dir>/onnx/<model>.onnx`` (or ``.int8.onnx``) beside a JSON sidecar
that records the fingerprint and path of the weights it came from, the preprocessing and the cosine
to torch measured at export on real photos. ``export_openvino`` checks OpenVINO on the fp32 file and
records that in its own sidecar (``<model>.openvino.json``). An export below ``FP32_MIN_COSINE`` /
``INT8_MIN_COSINE`` is refused and nothing is written.

Kept apart from the runtimes: serving never imports torch, exporting always does.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.core.files import sha256_file
from app.embedding.base import ImageEncoder, file_sha256
from app.embedding.runtimes.onnx import INPUT_NAME, OUTPUT_NAME, OnnxImageEncoder, export_paths, has_export
from app.embedding.runtimes.openvino import HINTS, OpenVinoImageEncoder

__all__ = ["ExportRefused", "check_parity", "export_onnx", "export_openvino", "export_paths", "has_export",
           "parity_images"]

log = logging.getLogger(__name__)

FP32_MIN_COSINE = 0.9999
INT8_MIN_COSINE = 0.999
OPSET = 17
# Per-channel weights with a 7-bit range: the default int8 settings (per tensor, full range) drift to
# cosine 0.979 on AVX2 CPUs, whose u8 x s8 kernels can saturate.
INT8_SETTINGS = {"per_channel": True, "reduce_range": True, "weight_type": "QInt8"}
OPENVINO = "openvino"


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

def parity_images() -> list[Image.Image]:
    """Real photographs (scikit-image's bundled public-domain ones) and crops of them."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.coins()]
    images = [Image.fromarray(p).convert("RGB") for p in photos]
    crops = [img.crop((img.width // 4, img.height // 4, img.width * 3 // 4, img.height * 3 // 4)) for img in images]
    return images + crops


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
        meta: dict[str, Any] = {
            "model": model,
            "runtime": runtime,
            "source": fp.as_dict(),
            "source_weights_path": str(Path(source.weights_path()).resolve()),
            "preprocessing": {"size": pre.size, "mode": pre.mode, "mean": list(pre.mean), "std": list(pre.std),
                              "interpolation": pre.interpolation},
            "match_threshold": source.match_threshold,
            "possible_threshold": source.possible_threshold,
            "onnx_sha256": sha256_file(tmp),
            "opset": OPSET,
            "quantisation": INT8_SETTINGS if int8 else None,
        }
        exported = OnnxImageEncoder(tmp, meta, batch_size=source.batch_size)
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


def export_openvino(source: ImageEncoder, model: str, models_dir: Path,
                    images: list[Image.Image] | None = None) -> dict:
    """Check OpenVINO on the fp32 ONNX export of ``source`` against torch, record it; returns the sidecar.

    Makes the fp32 ONNX export first if it is missing. Raises ExportRefused, writing nothing, when
    OpenVINO's cosine to torch is below ``FP32_MIN_COSINE``.
    """
    if not has_export(models_dir, model, "onnx"):
        export_onnx(source, model, models_dir)
    path, onnx_sidecar = export_paths(models_dir, model, "onnx")
    _, sidecar = export_paths(models_dir, model, OPENVINO)
    meta = {**json.loads(onnx_sidecar.read_text()), "runtime": OPENVINO}
    if meta["source"]["weights_sha256"] != source.fingerprint.weights_sha256:  # an export of older weights
        export_onnx(source, model, models_dir)
        meta = {**json.loads(onnx_sidecar.read_text()), "runtime": OPENVINO}
    images = images or parity_images()
    expected = source.embed(images)
    # Both plans: searches run on the latency one, batches on the throughput one.
    cosines = np.min([np.sum(expected * OpenVinoImageEncoder(path, meta, batch_size=source.batch_size, hint=hint)
                             .embed(images), axis=1) for hint in HINTS], axis=0)
    meta["parity"] = check_parity(cosines, FP32_MIN_COSINE, f"OpenVINO on the export of {model}")
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, sidecar)
    log.info("OpenVINO runs %s from %s (cosine to torch >= %.5f)", model, path, cosines.min())
    return meta
