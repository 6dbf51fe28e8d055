"""How the torch encoders run a forward pass: no autograd anywhere, fp16 or TF32 on CUDA.

On a GPU, fp16 autocast runs the matrix products of a large batch on tensor cores: ViT-B-32 on an
H200 ran 4.0-4.6x as fast as fp32 at 128 and 256 images. For fewer images its casts cost more than
they save (0.5-0.7x fp32 for one image), while fp32 with TF32 matrix products was as fast as fp32 for
one image and as fast as fp16 or faster up to 128 (two runs of ``scripts/gpu_benchmark.py``,
docs/BENCHMARKS.md). So a large batch runs in fp16 and a small one in TF32. Weights stay fp32;
numerically sensitive operations (softmax, layer norm) stay fp32 under autocast. Every vector leaves
as float32 and is normalised in float32 (``ImageEncoder.embed``), so the index and the scores never
see fp16.
"""

from __future__ import annotations

import contextlib

import numpy as np

# Batches from this size run in fp16 autocast on CUDA: below it TF32 was as fast or faster (H200).
FP16_MIN_BATCH = 128


def uses_fp16(device: str, batch: int = FP16_MIN_BATCH) -> bool:
    return str(device).startswith("cuda") and batch >= FP16_MIN_BATCH


@contextlib.contextmanager
def tf32_matmuls(enabled: bool = True):
    """CUDA matrix products in TF32 (or, with ``enabled=False``, in full fp32) within the block.
    torch's switch is process-wide, so the previous setting is restored after."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def inference_context(device: str, batch: int = FP16_MIN_BATCH) -> contextlib.ExitStack:
    """``torch.inference_mode``; on CUDA, fp16 autocast for a large batch, TF32 matrix products otherwise."""
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if uses_fp16(device, batch):
        stack.enter_context(torch.autocast(device_type="cuda", dtype=torch.float16))
    elif str(device).startswith("cuda"):
        stack.enter_context(tf32_matmuls())
    return stack


def run_module(module, batch: np.ndarray, device: str) -> np.ndarray:
    """(N, 3, H, W) float32 pixels through ``module`` on ``device``; returns float32 rows on the CPU."""
    import torch

    with inference_context(device, len(batch)):
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(device, non_blocking=True)
        return module(x).float().cpu().numpy()
