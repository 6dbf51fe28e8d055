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
    exported = [json.loads(l) for l in (tmp_path / "out" / "reg.jsonl").read_text().splitlines()]
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
