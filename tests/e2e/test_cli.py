"""The heritage-match command line, run in-process on a temporary data directory."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.core.config import get_settings
from tests.conftest import coin_query, jpeg_bytes, random_photo


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("HM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HM_MODEL", "efficientnet-lite0")
    get_settings.cache_clear()
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, list(args), catch_exceptions=False)
    get_settings.cache_clear()


def test_demo_then_search_json(cli, coins, tmp_path):
    import random

    r = cli("demo", "--if-empty")
    assert r.exit_code == 0 and "24 coins added" in r.output
    assert "nothing to add" in cli("demo", "--if-empty").output
    query = tmp_path / "q.jpg"
    query.write_bytes(coin_query(coins[7].image, random.Random(1)))
    r = cli("search", str(query), "--json", "--top-k", "3")
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout[r.stdout.index("{"):])
    assert len(body["results"]) == 3 and body["model"]["name"] == "efficientnet-lite0"
    assert body["results"][0]["inventory_number"] == coins[7].inventory_number


def test_registry_import_export_and_index_rebuild(cli, tmp_path):
    (tmp_path / "p.jpg").write_bytes(jpeg_bytes(random_photo(1)))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"inventory_number": "X-1", "photos": ["p.jpg"]}) + "\n{bad\n")
    r = cli("registry", "import", str(manifest))
    assert r.exit_code == 2 and "line 2" in r.output
    r = cli("registry", "export", str(tmp_path / "out" / "reg.jsonl"))
    assert r.exit_code == 0
    exported = [json.loads(line) for line in (tmp_path / "out" / "reg.jsonl").read_text().splitlines()]
    assert exported[0]["inventory_number"] == "X-1" and (tmp_path / "out" / exported[0]["photos"][0]["path"]).is_file()
    r = cli("index", "rebuild", "--reembed")
    assert r.exit_code == 0 and '"vectors": 1' in r.output


def test_models_list_and_offline_fetch_says_what_to_copy(cli, monkeypatch):
    import huggingface_hub.constants

    # Behave as an air-gapped post even on a machine that could reach the hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    r = cli("models", "list")
    assert r.exit_code == 0 and "efficientnet-lite0" in r.output
    r = cli("models", "fetch")
    assert r.exit_code == 1
    assert "connected machine" in r.output and "HM_MODEL=clip:ViT-B-32:" in r.output


def test_search_of_a_bad_file_fails_cleanly(cli, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    r = cli("search", str(bad))
    assert r.exit_code == 1 and "not an image" in r.output


def test_models_export_then_search_with_the_onnx_runtime(cli, coins, tmp_path, monkeypatch):
    import random

    r = cli("models", "export")
    assert r.exit_code == 0, r.output
    assert "HM_RUNTIME=onnx" in r.output and list((tmp_path / "models" / "onnx").glob("*.onnx"))
    assert cli("demo", "--if-empty").exit_code == 0  # embedded with torch
    monkeypatch.setenv("HM_RUNTIME", "onnx")
    get_settings.cache_clear()
    query = tmp_path / "q.jpg"
    query.write_bytes(coin_query(coins[3].image, random.Random(2)))
    r = cli("search", str(query), "--json", "--top-k", "3")
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout[r.stdout.index("{"):])
    assert body["results"][0]["inventory_number"] == coins[3].inventory_number
    assert body["model"]["calibrated"] is True  # fp32 ONNX keeps the shipped calibration of torch's fingerprint


def _main(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run the console script's entry point as a user does: (exit code, everything it printed)."""
    import sys

    import uvicorn

    from app.cli import main

    def no_server(*_, **__):
        raise AssertionError("the server was started despite the bad settings")

    monkeypatch.setattr(uvicorn, "run", no_server)
    monkeypatch.setattr(sys, "argv", ["heritage-match", *args])
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr()
    return done.value.code, " ".join((out.out + out.err).split())


@pytest.mark.parametrize("model, said", [
    ("bogus", "Unknown model 'bogus'"),
    ("clip:ViT-X:foo", "Unknown CLIP architecture 'ViT-X'"),
    ("clip:ViT-B-32:/nowhere/weights.pt", "checkpoint file /nowhere/weights.pt does not exist"),
])
def test_bad_model_settings_are_said_in_one_line_not_a_traceback(cli, tmp_path, monkeypatch, capsys, model, said):
    monkeypatch.setenv("HM_MODEL", model)
    get_settings.cache_clear()
    query = tmp_path / "q.jpg"
    query.write_bytes(jpeg_bytes(random_photo(1)))
    for args in (("search", str(query)), ("serve",)):
        code, text = _main(monkeypatch, capsys, *args)
        assert code == 1 and said in text and "Traceback" not in text, (args, text)


def test_a_corrupt_checkpoint_is_said_to_be_unreadable(cli, tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "corrupt.pt"
    checkpoint.write_bytes(bytes(range(256)) * 400)
    monkeypatch.setenv("HM_MODEL", f"clip:ViT-B-32:{checkpoint}")
    get_settings.cache_clear()
    query = tmp_path / "q.jpg"
    query.write_bytes(jpeg_bytes(random_photo(1)))
    code, text = _main(monkeypatch, capsys, "search", str(query))
    assert code == 1 and "is not a readable ViT-B-32 checkpoint" in text and "Traceback" not in text


def test_a_gpu_asked_for_where_there_is_none_is_said(cli, tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("HM_DEVICE", "cuda")
    get_settings.cache_clear()
    code, text = _main(monkeypatch, capsys, "serve")
    assert code == 1 and "no CUDA GPU" in text and "Traceback" not in text


def test_auto_on_an_exported_runtime_picks_the_model_torch_would(tmp_path):
    """CLIP weights are here but only the offline model was exported: the runtime must not switch models."""
    from app.core.config import Settings
    from app.core.errors import ModelUnavailable
    from app.embedding import create_encoder
    from app.embedding.runtimes.onnx import export_paths

    checkpoint = tmp_path / "clip.pt"
    checkpoint.write_bytes(b"weights")  # only its presence is looked at here
    settings = Settings(model="auto", clip_default=f"clip:ViT-B-32:{checkpoint}", runtime="onnx",
                        models_dir=tmp_path / "models", data_dir=tmp_path / "data")
    for path in export_paths(settings.models_dir, "efficientnet-lite0", "onnx"):  # a leftover export
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    with pytest.raises(ModelUnavailable, match="export of clip:ViT-B-32"):
        create_encoder(settings)


def test_offline_fetch_gives_up_at_once_when_the_hub_cannot_be_reached(cli, monkeypatch):
    import socket

    import huggingface_hub.constants
    import open_clip

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unreachable(*_, **__):
        raise OSError("Network is unreachable")

    def no_download(*_, **__):
        raise AssertionError("downloaded (and retried) although the hub cannot be reached")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(open_clip, "download_pretrained", no_download)
    r = cli("models", "fetch")
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "cannot be reached" in said and "connected machine" in said


def test_search_json_is_the_only_thing_on_stdout(tmp_path, monkeypatch):
    """`search --json | jq` must work: no library message on stdout."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    query = tmp_path / "q.jpg"
    query.write_bytes(jpeg_bytes(random_photo(1)))
    env = {**os.environ, "HM_DATA_DIR": str(tmp_path / "data"), "HM_MODEL": "efficientnet-lite0"}
    subprocess.run([sys.executable, "-m", "app.cli", "demo"], cwd=ROOT, env=env, capture_output=True, timeout=300)
    run = subprocess.run([sys.executable, "-m", "app.cli", "search", str(query), "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and json.loads(run.stdout)["model"]["name"] == "efficientnet-lite0"


def test_a_data_folder_that_cannot_be_used_is_said(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HM_DATA_DIR", str(blocker / "data"))
    get_settings.cache_clear()
    try:
        code, text = _main(monkeypatch, capsys, "keys", "list")
    finally:
        get_settings.cache_clear()
    assert code == 1 and "a-file" in text and "Traceback" not in text


def test_an_empty_registry_is_said_by_search_and_refused_by_scan(cli, tmp_path):
    query = tmp_path / "q.jpg"
    query.write_bytes(jpeg_bytes(random_photo(1)))
    r = cli("search", str(query))
    assert r.exit_code == 0 and "holds no indexed photo" in " ".join(r.output.split())
    (tmp_path / "dump").mkdir()
    (tmp_path / "dump" / "a.jpg").write_bytes(jpeg_bytes(random_photo(2)))
    r = CliRunner().invoke(app, ["scan", str(tmp_path / "dump"), "--out", str(tmp_path / "out")])
    assert r.exit_code != 0 and "holds no indexed photo" in " ".join(r.output.split())
    assert not (tmp_path / "out" / "matches.jsonl").exists()


def test_serve_trusts_no_forwarded_header_unless_a_proxy_is_named(cli, monkeypatch):
    """X-Forwarded-For from a client would let it pick its own address for the wrong-key limit."""
    import sys

    import uvicorn

    from app.cli import main

    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: runs.append(kw))
    for proxies in ("", "10.0.0.5"):
        monkeypatch.setenv("HM_FORWARDED_ALLOW_IPS", proxies)
        get_settings.cache_clear()
        monkeypatch.setattr(sys, "argv", ["heritage-match", "serve"])
        with pytest.raises(SystemExit):
            main()
    assert (runs[0]["proxy_headers"], runs[0]["forwarded_allow_ips"]) == (False, None)
    assert (runs[1]["proxy_headers"], runs[1]["forwarded_allow_ips"]) == (True, "10.0.0.5")
