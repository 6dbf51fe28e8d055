"""The ONNX Runtime backend: export checked against torch, fingerprints per runtime, a torch-free CPU
start, and the same search answers as torch. A random-weight ViT-B-32 stands in for real CLIP weights."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.core.config import Settings
from app.core.errors import IndexModelMismatch, ModelUnavailable
from app.embedding import create_encoder, create_torch_encoder, export
from app.embedding.export import ExportRefused, export_onnx, export_paths
from app.embedding.runtimes.onnx import OnnxImageEncoder
from app.service import MatchingService, PhotoInput
from tests.conftest import coin_query, png_bytes

ARCH = "ViT-B-32"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def clip_setup(tmp_path_factory):
    """A random-weight checkpoint, its torch encoder, and its fp32 and int8 exports in one models dir."""
    import open_clip

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("onnx")
    checkpoint = root / "vit-b-32-random.pt"
    torch.save(open_clip.create_model(ARCH).state_dict(), checkpoint)
    model = f"clip:{ARCH}:{checkpoint}"
    settings = Settings(model=model, models_dir=root / "models", device="cpu")
    torch_encoder = create_torch_encoder(settings).load()
    metas = {rt: export_onnx(torch_encoder, model, settings.models_dir, int8=(rt == "onnx-int8"))
             for rt in ("onnx", "onnx-int8")}
    return settings, torch_encoder, metas


def test_export_installs_model_and_sidecar_that_reproduce_torch(clip_setup):
    settings, torch_encoder, metas = clip_setup
    for runtime, required in (("onnx", 0.9999), ("onnx-int8", 0.999)):
        path, sidecar = export_paths(settings.models_dir, settings.model, runtime)
        assert path.is_file() and sidecar.is_file()
        meta = json.loads(sidecar.read_text())
        assert meta == metas[runtime]
        assert meta["source"]["id"] == torch_encoder.fingerprint.id
        assert meta["parity"]["images"] >= 5 and meta["parity"]["cosine_min"] >= required
    assert metas["onnx-int8"]["quantisation"]["per_channel"] is True
    assert metas["onnx-int8"]["quantisation"]["reduce_range"] is True
    assert path.stat().st_size < export_paths(settings.models_dir, settings.model, "onnx")[0].stat().st_size / 3
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_runtime_setting_picks_the_export_and_fingerprints_differ_only_for_int8(clip_setup):
    settings, torch_encoder, _ = clip_setup
    fp32 = create_encoder(settings.model_copy(update={"runtime": "onnx"}))
    int8 = create_encoder(settings.model_copy(update={"runtime": "onnx-int8"}))
    assert isinstance(fp32, OnnxImageEncoder) and isinstance(int8, OnnxImageEncoder)
    assert fp32.fingerprint.id == torch_encoder.fingerprint.id
    assert fp32.fingerprint.runtime == "onnx"
    assert int8.fingerprint.id != torch_encoder.fingerprint.id
    assert int8.fingerprint.name == torch_encoder.fingerprint.name

    from tests.conftest import random_photo

    photos = [random_photo(i) for i in range(4)]
    expected = torch_encoder.embed(photos)
    assert np.sum(expected * fp32.embed(photos), axis=1).min() >= 0.9999
    assert np.sum(expected * int8.embed(photos), axis=1).min() >= 0.995
    np.testing.assert_allclose(np.linalg.norm(int8.embed(photos), axis=1), 1.0, atol=1e-5)


def test_runtime_threads_go_idle_when_a_run_ends(clip_setup):
    """After an embedding the process uses no CPU: the search's keypoints and verification, and other
    requests, get the cores the model's worker threads would otherwise keep spinning on."""
    import time

    from tests.conftest import random_photo

    settings, _, _ = clip_setup
    encoder = create_encoder(settings.model_copy(update={"runtime": "onnx-int8", "threads": 2})).load()
    photo = random_photo(0)
    idle = []
    for _ in range(3):
        encoder.embed([photo])
        cpu = time.process_time()
        time.sleep(0.3)
        idle.append(time.process_time() - cpu)
    assert min(idle) < 0.01, f"CPU seconds used while idle after a run: {idle}"


def test_missing_export_says_how_to_make_it(tmp_path):
    settings = Settings(model="clip:ViT-B-32:/nowhere/x.pt", models_dir=tmp_path, runtime="onnx-int8", device="cpu")
    with pytest.raises(ModelUnavailable, match="models export --int8"):
        create_encoder(settings)


def test_export_of_changed_weights_is_refused(clip_setup, tmp_path):
    settings, _, metas = clip_setup
    other = tmp_path / "changed.pt"
    other.write_bytes(b"other weights")
    meta = {**metas["onnx"], "source_weights_path": str(other)}
    path, _ = export_paths(settings.models_dir, settings.model, "onnx")
    with pytest.raises(ModelUnavailable, match="missing or has changed"):
        OnnxImageEncoder(path, meta).fingerprint


def test_export_below_the_parity_threshold_is_refused_and_installs_nothing(tmp_path, monkeypatch):
    # efficientnet-lite0 (real weights) exports faithfully; a threshold above cosine 1 cannot be met.
    monkeypatch.setattr(export, "FP32_MIN_COSINE", 1.0001)
    settings = Settings(model="efficientnet-lite0", models_dir=tmp_path, device="cpu")
    encoder = create_torch_encoder(settings)
    with pytest.raises(ExportRefused, match="below the required 1.0001"):
        export_onnx(encoder, "efficientnet-lite0", tmp_path)
    assert list((tmp_path / "onnx").iterdir()) == []


def test_cpu_service_reaches_its_first_embedding_without_torch(clip_setup, tmp_path):
    settings, _, _ = clip_setup
    script = (
        "import sys\n"
        "from app.core.config import Settings\n"
        "from app.service import MatchingService\n"
        "from tests.conftest import random_photo\n"
        "svc = MatchingService(Settings()).start()\n"
        "vec = svc.encoder.embed_one(random_photo(1))\n"
        "assert vec.shape == (512,), vec.shape\n"
        "print(svc.fingerprint, sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))\n"
    )
    env = {**os.environ, "HM_RUNTIME": "onnx", "HM_MODEL": settings.model, "HM_DEVICE": "auto",
           "HM_MODELS_DIR": str(settings.models_dir), "HM_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[]"), out.stdout


def test_search_through_the_service_agrees_with_torch(clip_setup, coins, tmp_path):
    settings, torch_encoder, _ = clip_setup
    settings = settings.model_copy(update={"data_dir": tmp_path / "data"})
    with_torch = MatchingService(settings, encoder=torch_encoder).start()
    for i, coin in enumerate(coins[:8]):
        with_torch.register_artefact({"inventory_number": f"C-{i}"}, [PhotoInput(png_bytes(coin.image))])
    rng = random.Random(4)
    queries = [coin_query(coins[i].image, rng) for i in (1, 5)]
    expected = [with_torch.search(q, top_k=3) for q in queries]
    with_torch.close()

    # fp32 ONNX shares torch's fingerprint: the same index serves it, with the same answers.
    with_onnx = MatchingService(settings.model_copy(update={"runtime": "onnx"})).start()
    assert with_onnx.index.count == 8
    for query, want in zip(queries, expected):
        got = with_onnx.search(query, top_k=3)
        assert got.results[0].artefact_id == want.results[0].artefact_id
        assert abs(got.results[0].score - want.results[0].score) < 0.01
    with_onnx.close()

    # int8 vectors are not torch's: its service refuses the torch-built index until it is rebuilt.
    with_int8 = MatchingService(settings.model_copy(update={"runtime": "onnx-int8"})).start()
    with pytest.raises(IndexModelMismatch):
        with_int8.search(queries[0])
    with_int8.rebuild_index(reembed=True)
    assert with_int8.search(queries[0], top_k=3).results
    with_int8.close()
