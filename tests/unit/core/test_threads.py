"""Thread settings: several workers share the cores (cores // workers each, or HM_THREADS), and the
number reaches every library with a pool of its own: torch, ONNX Runtime, OpenVINO, OpenCV, BLAS, FAISS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.core import threads as threads_module
from app.core.config import Settings
from app.core.threads import available_cores, intra_op_threads

ROOT = Path(__file__).resolve().parents[3]
MODEL = "efficientnet-lite0"


def test_workers_share_the_cores_and_hm_threads_overrides(monkeypatch):
    monkeypatch.setattr(threads_module, "available_cores", lambda: 8)
    assert intra_op_threads(Settings(workers=1)) is None  # one worker: each library's own choice, all cores
    assert intra_op_threads(Settings(workers=2)) == 4
    assert intra_op_threads(Settings(workers=3)) == 2
    assert intra_op_threads(Settings(workers=16)) == 1  # never 0
    assert intra_op_threads(Settings(workers=2, threads=3)) == 3
    monkeypatch.setenv("HM_THREADS", "5")
    monkeypatch.setenv("HM_WORKERS", "4")
    assert (Settings().threads, Settings().workers) == (5, 4)
    monkeypatch.delenv("HM_THREADS")
    monkeypatch.setenv("HM_TORCH_THREADS", "6")  # the setting's former name still works
    assert Settings().threads == 6


# A worker process as `serve` starts it (environment first), then the API (its lifespan applies the
# limits); reports what each library was left with, as a request thread of the API sees it.
PROBE = """
import json, threading
from app.core.config import Settings
from app.core.threads import intra_op_threads, set_thread_environment
threads = intra_op_threads(Settings())
if threads:
    set_thread_environment(threads)
import cv2, faiss, torch
from threadpoolctl import threadpool_info
from fastapi.testclient import TestClient
from app.main import create_app
with TestClient(create_app()) as client:
    seen = {}
    def look():  # a thread of its own, like the thread pool that runs the API's routes
        seen.update(torch=torch.get_num_threads(), opencv=cv2.getNumThreads(), faiss=faiss.omp_get_max_threads(),
                    blas=[p["num_threads"] for p in threadpool_info()])
    t = threading.Thread(target=look)
    t.start(); t.join()
    print(json.dumps(seen))
"""


@pytest.mark.parametrize("env, expected", [
    ({"HM_WORKERS": "WORKERS"}, "PER_WORKER"),
    ({"HM_THREADS": "3"}, 3),
])
def test_the_api_process_applies_its_share_to_every_library(tmp_path, env, expected):
    cores = available_cores()
    workers = 2 * cores  # cores // workers rounds to 0 here: each worker still gets one thread
    env = {k: str(workers) if v == "WORKERS" else v for k, v in env.items()}
    expected = max(1, cores // workers) if expected == "PER_WORKER" else expected
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HM_") and "NUM_THREADS" not in k}
    full_env.update(env, HM_MODEL=MODEL, HM_DEVICE="cpu", HM_AUTH="false", HM_DATA_DIR=str(tmp_path / "data"),
                    HM_MODELS_DIR=str(tmp_path / "models"))
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=full_env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] == got["opencv"] == got["faiss"] == expected, got
    assert got["blas"] and all(n == expected for n in got["blas"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from app.embedding import create_torch_encoder
    from app.embedding.export import export_openvino

    models_dir = tmp_path_factory.mktemp("threads") / "models"
    settings = Settings(model=MODEL, models_dir=models_dir, device="cpu")
    export_openvino(create_torch_encoder(settings), MODEL, models_dir)  # makes the fp32 ONNX file too
    return settings


def test_exported_runtimes_get_the_thread_count(exported):
    from app.embedding import create_encoder

    settings = exported.model_copy(update={"threads": 1})  # OpenVINO caps the number at the cores there are
    onnx = create_encoder(settings.model_copy(update={"runtime": "onnx"})).load()
    assert onnx._session.get_session_options().intra_op_num_threads == 1
    openvino = create_encoder(settings.model_copy(update={"runtime": "openvino"})).load()
    openvino.embed_pixels(np.zeros((4, 3, 224, 224), np.float32))  # compiles the batch (throughput) plan too
    for plan in ("LATENCY", "THROUGHPUT"):
        assert int(openvino._compiled[plan].model.get_property("INFERENCE_NUM_THREADS")) == 1


def test_serve_tells_its_workers_how_many_they_are(monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from app.cli import app
    from app.core.config import get_settings

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append((kw, dict(os.environ))))
    for var in ("HM_WORKERS", "HM_THREADS", "HM_TORCH_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads_module, "available_cores", lambda: 8)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["serve", "--workers", "4"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    kwargs, env = calls[0]
    assert kwargs["workers"] == 4
    assert env["HM_WORKERS"] == "4"  # the worker processes compute their share from it
    assert env["OMP_NUM_THREADS"] == "2"
    for var in ("HM_WORKERS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.pop(var, None)  # set by serve, not through monkeypatch
