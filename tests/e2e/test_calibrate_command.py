"""``heritage-match calibrate``: a calibration fitted on the active registry, stored in its data
directory, and said to be in force by /healthz and by every search response.

The mechanics run on a randomly initialised CLIP (no download; what it finds does not matter here),
the figures on the offline model and the demo registry.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import app as cli_app
from app.core.config import Settings, get_settings
from tests.conftest import bearer, jpeg_bytes
from tests.unit.pipeline.pictures import textured


def _cli(monkeypatch, **env: str):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str):
        result = runner.invoke(cli_app, list(args), catch_exceptions=False)
        get_settings.cache_clear()
        return result

    return run


def _says(result, text: str) -> bool:
    """``text`` is in the command's output, however the console wrapped it."""
    return "".join(text.split()) in "".join(result.output.split())


@pytest.fixture(scope="module")
def random_clip(tmp_path_factory) -> str:
    from scripts.common import random_clip_model

    return random_clip_model(tmp_path_factory.mktemp("clip"))


def _register(settings: Settings, encoder, numbers: range) -> None:
    from app.service import MatchingService, PhotoInput

    service = MatchingService(settings, encoder=encoder).start()
    try:
        for i in numbers:
            service.register_artefact({"inventory_number": f"SYN-{i:02d}", "title": f"textured object {i}"},
                                      [PhotoInput(jpeg_bytes(textured(100 + i)), label=f"{i}.jpg")])
    finally:
        service.close()


def test_calibrate_stores_the_registrys_calibration_and_the_service_says_it_is_in_force(
        tmp_path, monkeypatch, random_clip):
    from app.embedding import create_encoder
    from app.jobs import calibration, listing_transforms
    from app.main import create_app
    from app.pipeline.calibrate import data_calibration_path
    from app.security.keys import KeyStore
    from app.service import MatchingService

    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", model=random_clip,
                        device="cpu", region_proposals=False, rate_limit_per_minute=0)
    encoder = create_encoder(settings).load()
    _register(settings, encoder, range(7))
    cli = _cli(monkeypatch, HM_DATA_DIR=str(settings.data_dir), HM_MODELS_DIR=str(settings.models_dir),
               HM_MODEL=random_clip, HM_DEVICE="cpu", HM_REGION_PROPOSALS="false")
    r = cli("calibrate")
    assert r.exit_code == 1
    assert _says(r, "calibration needs at least 8 registered artefacts with photos (found 7)")
    r = cli("calibrate", "--pack", str(tmp_path / "no-such-pack"))
    assert r.exit_code == 1 and _says(r, f"{tmp_path / 'no-such-pack' / 'references.jsonl'} is missing")

    _register(settings, encoder, range(7, 9))
    path = data_calibration_path(settings.data_dir, encoder.fingerprint.name)
    # Three of the listing transforms keep the test short: the mechanics do not depend on how many.
    monkeypatch.setattr(listing_transforms, "TRANSFORMS", {k: listing_transforms.TRANSFORMS[k]
                                                           for k in ("crop", "rotate", "jpeg-q30")})
    collected: dict[str, list[dict]] = {}
    search_pack = calibration.pack_rows

    def recording(pack, *args, **kwargs):
        collected[pack.name] = search_pack(pack, *args, **kwargs)
        return collected[pack.name]

    monkeypatch.setattr(calibration, "pack_rows", recording)
    r = cli("calibrate", "--folds", "3", "--twins", "3")
    assert r.exit_code == 0, r.output
    assert _says(r, "registry-listing") and _says(r, "false-match rate, 95% upper bound")
    assert _says(r, f"written: {path}")
    # A dry run fits and prints the same way but stores nothing (its candidates are the ones just collected).
    monkeypatch.setattr(calibration, "pack_rows", lambda pack, *_, **__: collected[pack.name])
    path.rename(path.with_suffix(".kept"))
    r = cli("calibrate", "--folds", "3", "--twins", "3", "--dry-run", "--json", str(tmp_path / "dry.json"))
    assert r.exit_code == 0, r.output
    assert _says(r, "false-match rate") and _says(r, "not stored") and not path.exists()
    assert json.loads((tmp_path / "dry.json").read_text())["fingerprint"] == encoder.fingerprint.id
    path.with_suffix(".kept").rename(path)

    stored = json.loads(path.read_text())
    assert stored["fingerprint"] == encoder.fingerprint.id and "origin" not in stored
    assert 0 < stored["possible"] <= stored["match"] < 1
    held_out = stored["source"]["figures_held_out"]["registry-listing"]
    assert held_out["open_set_queries"] > 0 and held_out["false_match_rate_upper95"] is not None
    assert stored["source"]["packs"]["registry-listing"]["artefacts"] == 9
    assert stored["source"]["packs"]["registry-listing"]["queries"] == 9 * 3 + 3
    assert stored["source"]["command"].startswith("heritage-match calibrate")

    service = MatchingService(settings, encoder=encoder).start()
    try:
        key = KeyStore(service.store.sessions).create("officer", "officer").token
        with TestClient(create_app(settings, service=service)) as client:
            health = client.get("/healthz").json()
            status = health["calibration"]
            assert status["origin"] == "data-dir" and status["path"] == path.name
            assert status["fitted"] == stored["source"]["fitted"]
            assert status["held_out"]["registry-listing"]["false_match_rate_upper95"] == \
                held_out["false_match_rate_upper95"]
            assert set(status["held_out"]["registry-listing"]) == {
                "recall@1", "match_recall", "false_match_rate", "false_match_rate_upper95"}
            assert health["model"]["calibration"] == f"data-dir, fitted {stored['source']['fitted']}"
            body = client.post("/v1/search", headers=bearer(key),
                               files={"image": ("q.jpg", jpeg_bytes(textured(103)), "image/jpeg")}).json()
            assert body["model"]["calibration"].startswith("data-dir, fitted ")
            assert body["model"]["calibrated"] is True and body["results"]
    finally:
        service.close()


def test_calibrate_on_the_demo_registry_with_the_offline_model(tmp_path, monkeypatch):
    """Real figures: the 24 demo coins, 8 of them used, four listing transforms each (for time)."""
    from app.jobs import listing_transforms
    from app.pipeline.calibrate import data_calibration_path

    cli = _cli(monkeypatch, HM_DATA_DIR=str(tmp_path / "data"), HM_MODELS_DIR=str(tmp_path / "models"),
               HM_MODEL="efficientnet-lite0", HM_DEVICE="cpu")
    assert cli("demo").exit_code == 0
    monkeypatch.setattr(listing_transforms, "TRANSFORMS", {k: listing_transforms.TRANSFORMS[k] for k in (
        "crop", "perspective", "colour", "downscale-300")})
    r = cli("calibrate", "--folds", "3", "--limit", "8", "--twins", "3", "--json", str(tmp_path / "cal.json"))
    assert r.exit_code == 0, r.output
    path = data_calibration_path(tmp_path / "data", "efficientnet-lite0")
    stored = json.loads(path.read_text())
    assert json.loads((tmp_path / "cal.json").read_text()) == stored
    figures = stored["source"]["figures_held_out"]["registry-listing"]
    # Open-set queries: the two held-out coins' (as they come), the near twins, and every registered
    # coin's queries again with that coin taken out of the registry.
    assert figures["open_set_queries"] >= 2 * 4 + 3
    assert figures["false_match_rate_upper95"] is not None and 0 < figures["false_match_rate_upper95"] <= 1
    assert figures["false_match_rate"] <= figures["false_match_rate_upper95"]
    assert figures["recall@1"] >= 0.5  # the offline model finds most coins even so
