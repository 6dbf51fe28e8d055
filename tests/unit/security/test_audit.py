"""The audit trail: every search and registry change, with who, what and which model; append-only."""

from __future__ import annotations

import hashlib
import json

import pytest
import sqlalchemy
from fastapi.testclient import TestClient

from app.main import create_app
from app.security.audit import AuditLog, event_dict
from app.security.keys import KeyStore
from app.service import PhotoInput
from tests.conftest import bearer, jpeg_bytes, random_photo

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases


@pytest.fixture
def trail(service):
    return AuditLog(service.store.sessions)


def _events(trail, action=None):
    return [event_dict(e) for e in trail.events() if action is None or e.action == action]


def test_search_is_recorded_with_results_model_and_index_version(settings, service, trail):
    photo = jpeg_bytes(random_photo(5))
    art = service.register_artefact({"inventory_number": "A-1"}, [PhotoInput(photo)])
    token = KeyStore(service.store.sessions).create("officer Amal", "officer").token
    with TestClient(create_app(settings, service=service), headers=bearer(token)) as client:
        body = client.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}).json()
        bad = client.post("/v1/search", files={"image": ("q.jpg", b"not an image", "image/jpeg")})
    assert bad.status_code == 422
    searches = _events(trail, "search")
    assert len(searches) == 2
    ok, refused = searches
    assert body["audit_id"] == ok["id"]
    assert ok["key_name"] == "officer Amal" and ok["role"] == "officer" and ok["outcome"] == "ok"
    assert ok["query_sha256"] == hashlib.sha256(photo).hexdigest()
    assert ok["model_fingerprint"] == service.fingerprint and ok["index_version"] == body["index_version"]
    assert ok["results"][0] == {"artefact_id": art.id, "photo_id": art.photos[0].id,
                                "score": body["results"][0]["score"], "verdict": "match"}
    assert len(ok["results"]) == len(body["results"])
    assert refused["outcome"] == "bad_image" and refused["query_sha256"] == hashlib.sha256(b"not an image").hexdigest()
    assert refused["results"] == []


def test_registry_changes_are_recorded_with_the_key_that_made_them(settings, service, trail):
    token = KeyStore(service.store.sessions).create("registrar Lina", "registrar").token
    with TestClient(create_app(settings, service=service), headers=bearer(token)) as client:
        art = client.post("/v1/artefacts", json={"inventory_number": "GZ-9", "title": "Amphora"}).json()
        photos = client.post(f"/v1/artefacts/{art['id']}/photos",
                             files={"image": ("a.jpg", jpeg_bytes(random_photo(6)), "image/jpeg")}).json()
        client.patch(f"/v1/artefacts/{art['id']}", json={"status": "stolen"})
        client.delete(f"/v1/artefacts/{art['id']}")
    changes = [e for e in _events(trail) if e["action"] != "key.create"]
    assert [e["action"] for e in changes] == ["artefact.create", "photo.add", "artefact.update", "artefact.delete"]
    assert all(e["key_name"] == "registrar Lina" and e["artefact_id"] == art["id"] for e in changes)
    assert changes[1]["details"]["photo_ids"] == [photos[0]["id"]]
    assert changes[2]["details"]["changes"] == {"status": "stolen"}
    assert changes[3]["details"]["inventory_number"] == "GZ-9"


def test_a_failed_change_leaves_no_audit_event(service, trail):
    service.register_artefact({"inventory_number": "X-1"}, [])
    before = len(_events(trail))
    with pytest.raises(Exception):
        service.register_artefact({"inventory_number": "X-1"}, [])  # duplicate: rolled back, event too
    assert len(_events(trail)) == before


def test_the_trail_refuses_update_and_delete(service, trail):
    photo = jpeg_bytes(random_photo(7))
    service.register_artefact({"inventory_number": "T-1"}, [PhotoInput(photo)])
    trail.record_search(service.search(photo))
    first = _events(trail)[0]["id"]
    statements = ["UPDATE audit_events SET key_name = 'someone else'", "DELETE FROM audit_events",
                  "DELETE FROM audit_results"]
    if service.store.engine.dialect.name == "sqlite":
        # REPLACE deletes the old row without firing DELETE triggers: refused as well.
        statements += [f"INSERT OR REPLACE INTO audit_events (id, at, key_name, action, outcome) "
                       f"VALUES ({first}, '2020-01-01', 'nobody', 'noop', 'ok')",
                       "REPLACE INTO audit_results (audit_id, rank, artefact_id, score, verdict) "
                       "SELECT audit_id, rank, 999, 0.0, 'no_match' FROM audit_results"]
    else:  # PostgreSQL: TRUNCATE skips row triggers, and an upsert is an UPDATE
        statements += ["TRUNCATE audit_results", "TRUNCATE audit_events CASCADE",
                       f"INSERT INTO audit_events (id, at, key_name, role, action, outcome) "
                       f"VALUES ({first}, '2020-01-01', 'nobody', 'admin', 'noop', 'ok') "
                       "ON CONFLICT (id) DO UPDATE SET key_name = EXCLUDED.key_name"]
    for statement in statements:
        with pytest.raises(sqlalchemy.exc.IntegrityError, match="append-only"):
            with service.store.engine.begin() as conn:
                conn.execute(sqlalchemy.text(statement))
    assert _events(trail)[0]["key_name"] == "local"
    assert not [n for n in dir(AuditLog) if n.startswith(("update", "delete", "remove"))]


def test_cli_import_and_search_are_audited_and_exported(tmp_path, monkeypatch, db_env):
    from typer.testing import CliRunner

    from app.cli import app as cli_app
    from app.core.config import get_settings

    monkeypatch.setenv("HM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HM_MODEL", "efficientnet-lite0")
    get_settings.cache_clear()
    try:
        photo = tmp_path / "p.jpg"
        photo.write_bytes(jpeg_bytes(random_photo(8)))
        manifest = tmp_path / "m.jsonl"
        manifest.write_text(json.dumps({"inventory_number": "C-1", "photos": ["p.jpg"]}) + "\n")
        runner = CliRunner()
        assert runner.invoke(cli_app, ["registry", "import", str(manifest)]).exit_code == 0
        r = runner.invoke(cli_app, ["search", str(photo), "--json"])
        assert r.exit_code == 0
        audit_id = json.loads(r.stdout[r.stdout.index("{"):])["audit_id"]
        out = tmp_path / "audit.jsonl"
        assert runner.invoke(cli_app, ["audit", "export", str(out)]).exit_code == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["action"] for r in rows] == ["artefact.create", "search"]
        assert all(r["key_name"].startswith("cli:") and r["role"] == "admin" for r in rows)
        assert rows[1]["id"] == audit_id and rows[1]["results"][0]["verdict"] == "match"
        assert rows[1]["query_sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    finally:
        get_settings.cache_clear()
