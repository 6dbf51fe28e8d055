"""How the torch encoders run a forward pass: no autograd anywhere, fp16 on CUDA.

On a GPU, fp16 autocast runs the matrix products on tensor cores, several times faster than fp32;
weights stay fp32 and numerically sensitive operations (softmax, layer norm) stay in fp32 under
autocast. Every vector leaves as float32 and is normalised in float32 (``ImageEncoder.embed``), so
the index and the scores never see fp16.
"""

from __future__ import annotations

import contextlib

import numpy as np


def uses_fp16(device: str) -> bool:
    return str(device).startswith("cuda")


def inference_context(device: str) -> contextlib.ExitStack:
    """``torch.inference_mode``, plus fp16 autocast when ``device`` is a CUDA device."""
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if uses_fp16(device):
        stack.enter_context(torch.autocast(device_type="cuda", dtype=torch.float16))
    return stack


def run_module(module, batch: np.ndarray, device: str) -> np.ndarray:
    """(N, 3, H, W) float32 pixels through ``module`` on ``device``; returns float32 rows on the CPU."""
    import torch

    with inference_context(device):
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(device, non_blocking=True)
        return module(x).float().cpu().numpy()
