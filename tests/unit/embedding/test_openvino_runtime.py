"""The OpenVINO backend: runs the fp32 ONNX export, checked against torch at export, shares torch's
fingerprint, starts without torch and gives the service the same answers. efficientnet-lite0's real
weights make the export quick; the benchmark runs it on ViT-B-32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.core.config import Settings
from app.core.errors import ModelUnavailable
from app.embedding import create_encoder, create_torch_encoder, export
from app.embedding.export import ExportRefused, export_openvino, export_paths
from app.embedding.runtimes import openvino as openvino_runtime
from app.embedding.runtimes.openvino import OpenVinoImageEncoder
from tests.conftest import random_photo

ROOT = Path(__file__).resolve().parents[3]
MODEL = "efficientnet-lite0"


@pytest.fixture(scope="module")
def ov_setup(tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("openvino") / "models"
    settings = Settings(model=MODEL, models_dir=models_dir, device="cpu")
    torch_encoder = create_torch_encoder(settings).load()
    meta = export_openvino(torch_encoder, MODEL, models_dir)
    return settings, torch_encoder, meta


def test_export_checks_openvino_against_torch_beside_the_fp32_file(ov_setup):
    settings, torch_encoder, meta = ov_setup
    path, sidecar = export_paths(settings.models_dir, MODEL, "openvino")
    assert path == export_paths(settings.models_dir, MODEL, "onnx")[0]  # the same .onnx file, compiled
    assert json.loads(sidecar.read_text()) == meta
    assert meta["runtime"] == "openvino" and meta["source"]["id"] == torch_encoder.fingerprint.id
    assert meta["parity"]["images"] >= 5 and meta["parity"]["cosine_min"] >= 0.9999
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_openvino_gives_torchs_vectors_and_fingerprint(ov_setup):
    settings, torch_encoder, _ = ov_setup
    for hint in (None, "LATENCY", "THROUGHPUT"):
        encoder = OpenVinoImageEncoder.from_models_dir(MODEL, settings.models_dir, threads=2, hint=hint)
        assert encoder.fingerprint.id == torch_encoder.fingerprint.id and encoder.fingerprint.runtime == "openvino"
        photos = [random_photo(i) for i in range(5)]
        got = encoder.embed(photos)
        assert got.dtype == np.float32 and got.shape == (5, torch_encoder.dim)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.sum(torch_encoder.embed(photos) * got, axis=1).min() >= 0.9999
    assert isinstance(create_encoder(settings.model_copy(update={"runtime": "openvino"})), OpenVinoImageEncoder)


def test_a_restart_loads_the_compiled_plan_from_a_cache_named_after_the_files_contents(ov_setup):
    settings, _, meta = ov_setup
    path, _ = export_paths(settings.models_dir, MODEL, "openvino")
    photos = [random_photo(i) for i in range(3)]
    first = OpenVinoImageEncoder.from_models_dir(MODEL, settings.models_dir, hint="LATENCY").load().embed(photos)
    cache = path.parent / "openvino-cache" / meta["onnx_sha256"][:16]
    assert cache.is_dir() and any(cache.iterdir())  # a re-export with other contents gets another folder
    again = OpenVinoImageEncoder.from_models_dir(MODEL, settings.models_dir, hint="LATENCY").load().embed(photos)
    np.testing.assert_array_equal(first, again)


def test_searches_run_on_the_latency_plan_and_batches_on_the_throughput_plan(ov_setup):
    settings, torch_encoder, _ = ov_setup
    encoder = create_encoder(settings.model_copy(update={"runtime": "openvino"})).load()
    assert set(encoder._compiled) == {"LATENCY"}  # the start compiles only what a search needs
    one = encoder.embed_one(random_photo(7))
    assert set(encoder._compiled) == {"LATENCY"}
    photos = [random_photo(i) for i in range(openvino_runtime.THROUGHPUT_MIN_BATCH)]
    batch = encoder.embed(photos)
    assert set(encoder._compiled) == {"LATENCY", "THROUGHPUT"}
    assert np.sum(torch_encoder.embed(photos) * batch, axis=1).min() >= 0.9999
    np.testing.assert_allclose(encoder.embed(photos[:1] + [random_photo(7)] * 3)[3], one, atol=1e-5)


def test_missing_check_says_how_to_make_it(tmp_path):
    settings = Settings(model=MODEL, models_dir=tmp_path, runtime="openvino", device="cpu")
    with pytest.raises(ModelUnavailable, match="models export --openvino"):
        create_encoder(settings)


def test_a_changed_onnx_file_is_refused(ov_setup, tmp_path):
    settings, _, meta = ov_setup
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the checked model")
    with pytest.raises(ModelUnavailable, match="does not match its sidecar"):
        OpenVinoImageEncoder(other, meta).load()


def test_export_below_the_parity_threshold_is_refused(ov_setup, monkeypatch):
    settings, torch_encoder, meta = ov_setup
    _, sidecar = export_paths(settings.models_dir, MODEL, "openvino")
    before = sidecar.read_text()
    monkeypatch.setattr(export, "FP32_MIN_COSINE", 1.0001)
    with pytest.raises(ExportRefused, match="below the required 1.0001"):
        export_openvino(torch_encoder, MODEL, settings.models_dir)
    assert sidecar.read_text() == before  # the earlier, passing check stays as it was


def test_openvino_service_starts_and_embeds_without_torch(ov_setup, tmp_path):
    settings, _, _ = ov_setup
    script = (
        "import sys\n"
        "from app.core.config import Settings\n"
        "from app.service import MatchingService\n"
        "from tests.conftest import random_photo\n"
        "svc = MatchingService(Settings()).start()\n"
        "vec = svc.encoder.embed_one(random_photo(1))\n"
        "assert vec.shape == (1280,), vec.shape\n"
        "print(svc.fingerprint, sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))\n"
    )
    env = {**os.environ, "HM_RUNTIME": "openvino", "HM_MODEL": MODEL, "HM_DEVICE": "auto",
           "HM_MODELS_DIR": str(settings.models_dir), "HM_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[]"), out.stdout


def test_cli_exports_for_openvino(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app
    from app.core.config import get_settings

    monkeypatch.setenv("HM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HM_MODEL", MODEL)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["models", "export", "--openvino"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "HM_RUNTIME=openvino" in result.output
    assert all(p.is_file() for p in export_paths(tmp_path / "models", MODEL, "openvino"))


def test_with_hm_runtime_onnx_batches_run_on_the_checked_openvino_plan(ov_setup, tmp_path):
    settings, torch_encoder, _ = ov_setup
    onnx = create_encoder(settings.model_copy(update={"runtime": "onnx"})).load()
    photos = [random_photo(i) for i in range(6)]
    got = onnx.embed(photos)
    batch_encoder = onnx.batch_encoder()
    assert isinstance(batch_encoder, OpenVinoImageEncoder) and batch_encoder.hint == "THROUGHPUT"
    assert np.sum(torch_encoder.embed(photos) * got, axis=1).min() >= 0.9999
    assert onnx.fingerprint.id == torch_encoder.fingerprint.id

    # Without OpenVINO's check beside the file, ONNX Runtime runs the batches itself.
    import shutil

    path, sidecar = export_paths(settings.models_dir, MODEL, "onnx")
    alone = tmp_path / "models"
    (alone / "onnx").mkdir(parents=True)
    for f in (path, sidecar):
        shutil.copy(f, alone / "onnx" / f.name)
    unchecked = create_encoder(settings.model_copy(update={"runtime": "onnx", "models_dir": alone}))
    np.testing.assert_allclose(unchecked.embed(photos), got, atol=1e-4)
    assert unchecked.batch_encoder() is None
