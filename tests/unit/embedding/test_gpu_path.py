"""The GPU path, as far as a machine without a GPU can check it: the device choice, that a CUDA
forward pass asks torch for fp16 autocast (large batches) or TF32 (small ones), and that vectors always
leave as normalised float32.
(Speed and fp16's closeness to fp32 need a GPU: docs/BENCHMARKS.md says what was measured where.)"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from app.core.config import Settings
from app.embedding import resolve_device
from app.embedding.base import ImageEncoder
from app.embedding.preprocess import Preprocessing
from app.embedding.runtimes import torch_inference
from app.embedding.runtimes.torch_inference import inference_context, run_module, uses_fp16


@pytest.mark.parametrize("setting, has_gpu, expected", [
    ("auto", True, "cuda"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("cuda", True, "cuda"),
])
def test_device_resolution(monkeypatch, setting, has_gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
    assert resolve_device(Settings(device=setting)) == expected


def test_cuda_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device(Settings(device="cuda"))


def test_a_large_cuda_batch_runs_under_fp16_autocast_a_small_one_in_tf32_and_a_cpu_one_in_neither(monkeypatch):
    requested = []

    @contextlib.contextmanager
    def recording_autocast(device_type, dtype=None, **kw):
        requested.append((device_type, dtype))
        yield

    monkeypatch.setattr(torch, "autocast", recording_autocast)
    assert not torch.backends.cuda.matmul.allow_tf32  # torch's default
    big = torch_inference.FP16_MIN_BATCH
    with inference_context("cuda:0", big):
        assert torch.is_inference_mode_enabled() and not torch.backends.cuda.matmul.allow_tf32
    assert requested == [("cuda", torch.float16)]
    with inference_context("cuda:0", 1):  # one photo: fp16's casts cost more than they save
        assert torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32  # restored: the setting is process-wide
    with inference_context("cpu", big):
        assert torch.is_inference_mode_enabled() and not torch.backends.cuda.matmul.allow_tf32
    assert requested == [("cuda", torch.float16)]
    assert uses_fp16("cuda", big) and uses_fp16("cuda:1", big + 1)
    assert not uses_fp16("cuda", big - 1) and not uses_fp16("cpu", big)


def test_the_batch_size_follows_the_device_unless_set():
    from app.embedding import CPU_BATCH_SIZE, GPU_BATCH_SIZE, batch_size_for

    assert batch_size_for(Settings(), "cpu") == CPU_BATCH_SIZE
    assert batch_size_for(Settings(), "cuda") == GPU_BATCH_SIZE
    assert batch_size_for(Settings(batch_size=8), "cuda") == 8


class HalfOutput(torch.nn.Module):
    """Stands in for a network under autocast: its output is float16."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1).half()


class HalfEncoder(ImageEncoder):
    name, dim = "half", 6

    def __init__(self):
        super().__init__(Preprocessing(size=16, mode="squash", mean=(0.5,) * 3, std=(0.25,) * 3))

    def weights_path(self):
        raise NotImplementedError

    def _load(self):
        self.module = HalfOutput()

    def _forward(self, batch):
        return run_module(self.module, batch, self.device)


def test_vectors_leave_as_normalised_float32_whatever_the_network_computes_in():
    out = run_module(HalfOutput(), np.random.default_rng(0).random((3, 3, 8, 8), dtype=np.float32), "cpu")
    assert out.dtype == np.float32 and out.shape == (3, 6)
    from tests.conftest import random_photo

    vecs = HalfEncoder().embed([random_photo(i) for i in range(4)])
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)


def test_the_efficientnet_descriptor_pools_in_fp32(encoder, monkeypatch):
    # GeM cubes the feature map: in fp16 it would overflow, so the pooling input is cast to fp32.
    features = torch.full((1, 4, 2, 2), 60.0, dtype=torch.float16)  # 60**3 > fp16's largest number
    monkeypatch.setattr(encoder._net, "extract_features", lambda x: features)
    out = encoder._descriptor(torch.zeros(1, 3, 8, 8))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((1, 4), 60.0))
