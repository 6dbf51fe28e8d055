"""API keys, roles and rate limits: a role matrix over every endpoint of the app."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.main import create_app
from app.security.keys import KeyStore, hash_key
from app.security.models import ApiKey
from app.service import PhotoInput
from tests.conftest import ROLES, bearer, jpeg_bytes, random_photo

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases

WRITERS = {"admin", "registrar"}

# Every endpoint and the roles that may call it. Officers and monitors reach records and photos only
# of artefacts their own searches matched (the matrix searches first; see the tests below for the rest).
MATRIX: dict[tuple[str, str], set[str]] = {
    ("POST", "/v1/search"): set(ROLES),
    ("GET", "/v1/artefacts"): WRITERS,
    ("POST", "/v1/artefacts"): WRITERS,
    ("GET", "/v1/artefacts/{artefact_id}"): WRITERS | {"officer"},
    ("PATCH", "/v1/artefacts/{artefact_id}"): WRITERS,
    ("DELETE", "/v1/artefacts/{artefact_id}"): WRITERS,
    ("POST", "/v1/artefacts/{artefact_id}/photos"): WRITERS,
    ("GET", "/v1/photos/{photo_id}"): WRITERS | {"officer"},  # full size; monitors: thumbnails only
    ("GET", "/v1/keys"): {"admin"},
    ("POST", "/v1/keys"): {"admin"},
    ("DELETE", "/v1/keys/{key_id}"): {"admin"},
    ("POST", "/v1/index/rebuild"): {"admin"},
    ("GET", "/v1/alerts"): WRITERS,
    ("GET", "/v1/alerts/{alert_id}"): WRITERS,
    ("PATCH", "/v1/alerts/{alert_id}"): WRITERS,
    ("GET", "/v1/alerts/{alert_id}/listing-photo"): WRITERS,
    ("GET", "/v1/webhooks"): {"admin"},
    ("POST", "/v1/webhooks"): {"admin"},
    ("DELETE", "/v1/webhooks/{webhook_id}"): {"admin"},
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): {"admin"},
}
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
# The web pages (app/web): outside /v1 and the OpenAPI schema, signed in by a session cookie, never by
# a Bearer key. Each but the sign-in pages checks a permission of the session's key; tests/web/test_web.py
# holds their role matrix.
WEB = {
    ("GET", "/"), ("GET", "/signin"), ("POST", "/signin"), ("POST", "/signout"),
    ("GET", "/search"), ("POST", "/search"), ("GET", "/results/{search_id}"),
    ("GET", "/results/{search_id}/report"), ("GET", "/results/{search_id}/query.jpg"),
    ("GET", "/photos/{photo_id}"),
    ("GET", "/registry"), ("GET", "/registry/new"), ("POST", "/registry/new"), ("GET", "/registry/{artefact_id}"),
    ("POST", "/registry/{artefact_id}"), ("POST", "/registry/{artefact_id}/photos"),
    ("GET", "/alerts"), ("GET", "/alerts/{alert_id}"), ("POST", "/alerts/{alert_id}"),
    ("GET", "/alerts/{alert_id}/listing.jpg"),
}
WEB_SIGN_IN = {"/", "/signin", "/signout"}


@pytest.fixture
def registry(service):
    """One artefact with a photo; returns (artefact id, photo id, the photo's bytes)."""
    data = jpeg_bytes(random_photo(11))
    art = service.register_artefact({"inventory_number": "M-1", "title": "Stele"}, [PhotoInput(data, "front")])
    return art.id, art.photos[0].id, data


def _request(route, client, service, registry, keystore):
    """Send one request to ``route`` that the role matrix judges by its status."""
    method, path = route
    art_id, photo_id, photo = registry
    if path == "/v1/search":
        return client.post(path, files={"image": ("q.jpg", photo, "image/jpeg")})
    if path == "/v1/artefacts":
        return client.get(path) if method == "GET" else client.post(path, json={"inventory_number": "N-1"})
    if path == "/v1/artefacts/{artefact_id}":
        if method == "DELETE":  # a throw-away artefact, so later requests still find theirs
            victim = service.register_artefact({"inventory_number": f"D-{keystore.counter()}"}, [])
            return client.delete(f"/v1/artefacts/{victim.id}")
        if method == "PATCH":
            return client.patch(f"/v1/artefacts/{art_id}", json={"title": "Stele, basalt"})
        return client.get(f"/v1/artefacts/{art_id}")
    if path == "/v1/artefacts/{artefact_id}/photos":
        return client.post(f"/v1/artefacts/{art_id}/photos",
                           files={"image": ("b.jpg", jpeg_bytes(random_photo(12)), "image/jpeg")})
    if path == "/v1/photos/{photo_id}":
        return client.get(f"/v1/photos/{photo_id}")
    if path == "/v1/keys":
        return client.get(path) if method == "GET" else client.post(path, json={"name": "new", "role": "officer"})
    if path == "/v1/keys/{key_id}":
        victim = keystore.store.create(f"victim-{keystore.counter()}", "monitor").key
        return client.delete(f"/v1/keys/{victim.id}")
    if path == "/v1/index/rebuild":
        return client.post(path)
    if path.startswith("/v1/alerts"):
        alert_id = keystore.alert(service, registry)
        if method == "PATCH":
            return client.patch(f"/v1/alerts/{alert_id}", json={"status": "confirmed"})
        return client.get(path.format(alert_id=alert_id))
    if path == "/v1/webhooks":  # a public address literal: accepted without a DNS lookup (nothing is sent to it)
        return client.get(path) if method == "GET" else client.post(path, json={"url": "https://93.184.216.34/h"})
    if path.startswith("/v1/webhooks/{webhook_id}"):
        victim = keystore.webhook(service)
        if method == "DELETE":
            return client.delete(f"/v1/webhooks/{victim}")
        return client.get(path.format(webhook_id=victim))
    raise AssertionError(f"no request written for {route}: add it here and to MATRIX")


class _Keys:
    def __init__(self, service):
        self.store = KeyStore(service.store.sessions)
        self.n = 0

    def counter(self) -> int:
        self.n += 1
        return self.n

    def alert(self, service, registry) -> int:
        """One alert on the registry's artefact, with a kept listing photo (raised once)."""
        from app.registry.alerts import AlertDraft, AlertStore

        art_id, photo_id, photo = registry
        alert, _ = AlertStore(service.store.sessions).raise_alert(AlertDraft(
            artefact_id=art_id, registry_photo_id=photo_id, score=0.9, verdict="match", source="scan",
            archive_photo_id=1, listing_thumbnail=photo))
        return alert.id

    def webhook(self, service) -> int:
        """A throw-away webhook endpoint (registered directly: loopback, allowed here)."""
        from app.registry.alerts import WebhookStore

        hooks = WebhookStore(service.store.sessions, allow_private=True)
        return hooks.add(f"http://127.0.0.1:9/victim-{self.counter()}").endpoint.id


def app_routes(app) -> list:
    """Every route the app serves, routers included (FastAPI 0.16x includes routers lazily)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: included routes are flat in app.routes
        return list(app.routes)
    return [c.route for c in iter_route_contexts(app.routes)]


def _permission_checks(dependant) -> list:
    found = [d.call for d in dependant.dependencies if hasattr(d.call, "permissions")]
    return found + [c for d in dependant.dependencies for c in _permission_checks(d)]


def test_matrix_covers_every_route_of_the_app(app):
    routes = app_routes(app)
    api = {(m, r.path) for r in routes if isinstance(r, APIRoute) and r.include_in_schema for m in r.methods}
    assert api == set(MATRIX) | PUBLIC, "a new endpoint needs a row in MATRIX (and a permission)"
    hidden = {r.path for r in routes if getattr(r, "include_in_schema", True) is False}
    assert hidden == DOCS | {path for _, path in WEB}, "only the docs and the web pages may be unlisted"
    web = {(m, r.path) for r in routes if isinstance(r, APIRoute) and not r.include_in_schema
           and r.path not in DOCS for m in r.methods}
    assert web == WEB, "a new web page needs a row in WEB (and in tests/web/test_web.py's matrix)"
    for route in routes:
        if isinstance(route, APIRoute) and route.path.startswith("/v1"):
            assert _permission_checks(route.dependant), f"{route.path} has no permission check"
        elif isinstance(route, APIRoute):
            assert not route.path.startswith("/v1")
            if route.path not in WEB_SIGN_IN | {"/healthz", "/readyz"} and route.path not in DOCS:
                assert _permission_checks(route.dependant), f"web page {route.path} has no permission check"


@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(role, app, service, keys, registry):
    keystore = _Keys(service)
    with TestClient(app, headers=bearer(keys[role])) as client:
        # An officer's or monitor's access to records follows its searches: search the photo first.
        assert client.post("/v1/search", files={"image": ("q.jpg", registry[2], "image/jpeg")}).status_code == 200
        for route, allowed in MATRIX.items():
            r = _request(route, client, service, registry, keystore)
            if role in allowed:
                assert r.status_code < 400, (route, role, r.status_code, r.text)
            else:
                assert r.status_code == 403, (route, role, r.status_code, r.text)
                assert r.json()["error"]["code"] == "forbidden"


def test_every_protected_route_refuses_without_a_valid_key(app, service, registry, keys):
    keystore = _Keys(service)
    for headers in ({}, {"Authorization": "Bearer hm_not-a-key"}, {"Authorization": "Basic YWRtaW46YWRtaW4="}):
        with TestClient(app, headers=headers) as client:
            for route in MATRIX:
                r = _request(route, client, service, registry, keystore)
                assert r.status_code == 401, (route, headers, r.text)
                assert r.headers["WWW-Authenticate"] == "Bearer"
                assert r.json()["error"]["code"] == "unauthorized"
    with TestClient(app) as client:
        message = client.get("/v1/artefacts").json()["error"]["message"]
        assert "heritage-match keys create" in message and "Authorization: Bearer" in message
        for method, path in PUBLIC:
            assert client.request(method, path).status_code == 200
        assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200


def test_officer_reads_only_what_its_searches_matched(app, service, keys, registry):
    other = service.register_artefact({"inventory_number": "M-2"}, [PhotoInput(jpeg_bytes(random_photo(21)))])
    with TestClient(app, headers=bearer(keys["officer"])) as officer:
        art_id, photo_id, photo = registry
        # Not yet searched: refused, and a missing id gets the very same answer.
        first = officer.get(f"/v1/artefacts/{art_id}")
        missing = officer.get("/v1/artefacts/987654")
        assert first.status_code == missing.status_code == 403 and first.json() == missing.json()
        assert officer.get(f"/v1/photos/{photo_id}").status_code == 403
        assert officer.get("/v1/photos/987654").json() == officer.get(f"/v1/photos/{photo_id}").json()

        hit = officer.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}).json()["results"][0]
        assert hit["artefact_id"] == art_id and hit["verdict"] == "match"
        assert officer.get(f"/v1/artefacts/{art_id}").json()["inventory_number"] == "M-1"
        assert officer.get(f"/v1/photos/{photo_id}").content == photo
        # The other artefact was never matched: still closed.
        assert officer.get(f"/v1/artefacts/{other.id}").status_code == 403
    with TestClient(app, headers=bearer(keys["monitor"])) as monitor:
        # Another key's searches open nothing to this one.
        assert monitor.get(f"/v1/photos/{photo_id}?size=thumb").status_code == 403


def test_an_officers_search_never_lists_records_it_may_not_open(app, service, keys):
    for i in range(12):
        service.register_artefact({"inventory_number": f"SECRET-{i}", "title": f"Hidden {i}"},
                                  [PhotoInput(jpeg_bytes(random_photo(300 + i)))])
    unrelated = jpeg_bytes(random_photo(999))
    with TestClient(app, headers=bearer(keys["officer"])) as officer:
        results = officer.post("/v1/search?top_k=100",
                               files={"image": ("q.jpg", unrelated, "image/jpeg")}).json()["results"]
        assert all(r["verdict"] in ("match", "possible") for r in results)
        assert not any(r["inventory_number"].startswith("SECRET-") and r["verdict"] == "no_match" for r in results)
    with TestClient(app, headers=bearer(keys["registrar"])) as registrar:  # a role that may list the registry
        results = registrar.post("/v1/search?top_k=100",
                                 files={"image": ("q.jpg", unrelated, "image/jpeg")}).json()["results"]
        assert len(results) >= 12 and any(r["verdict"] == "no_match" for r in results)


def test_monitor_sees_only_matches_and_thumbnails(app, service, keys, registry):
    for seed in range(30, 34):
        service.register_artefact({"inventory_number": f"O-{seed}"}, [PhotoInput(jpeg_bytes(random_photo(seed)))])
    art_id, photo_id, photo = registry
    unrelated = jpeg_bytes(random_photo(99))
    with TestClient(app, headers=bearer(keys["admin"])) as admin:
        seen_by_admin = admin.post("/v1/search", files={"image": ("u.jpg", unrelated, "image/jpeg")}).json()
    assert any(r["verdict"] != "match" for r in seen_by_admin["results"]), "the admin sees near misses"
    with TestClient(app, headers=bearer(keys["monitor"])) as monitor:
        body = monitor.post("/v1/search", files={"image": ("u.jpg", unrelated, "image/jpeg")}).json()
        assert all(r["verdict"] == "match" for r in body["results"])
        hit = monitor.post("/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}).json()["results"]
        assert [r["artefact_id"] for r in hit] == [art_id]
        assert hit[0]["photo_url"] == f"/v1/photos/{photo_id}?size=thumb"
        thumb = monitor.get(hit[0]["photo_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert monitor.get(f"/v1/photos/{photo_id}").status_code == 403  # never the full photo
        assert monitor.get(f"/v1/artefacts/{art_id}").status_code == 403  # nor the record
        assert monitor.get("/v1/artefacts").status_code == 403  # nor the registry


def test_keys_are_stored_as_hashes_shown_once_and_revocable(app, service, keys):
    with TestClient(app, headers=bearer(keys["admin"])) as admin:
        created = admin.post("/v1/keys", json={"name": "field officer", "role": "officer"}).json()
        token = created["key"]
        assert token.startswith("hm_") and len(token) > 40
        listed = admin.get("/v1/keys").json()
        assert all("key" not in k for k in listed) and token not in str(listed)
        with service.store.sessions() as s:
            row = s.get(ApiKey, created["id"])
            assert row.key_hash == hash_key(token) and token not in (row.key_hash, row.prefix, row.name)
        assert admin.post("/v1/keys", json={"name": "x", "role": "superuser"}).status_code == 422

        with TestClient(app, headers=bearer(token)) as officer:
            photo = {"image": ("q.jpg", jpeg_bytes(random_photo(1)), "image/jpeg")}
            assert officer.post("/v1/search", files=photo).status_code == 200
            assert admin.delete(f"/v1/keys/{created['id']}").json()["revoked_at"] is not None
            r = officer.post("/v1/search", files={"image": ("q.jpg", jpeg_bytes(random_photo(1)), "image/jpeg")})
            assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_a_key_name_is_never_mistaken_for_a_key_id(service):
    from app.core.errors import AppError

    store = KeyStore(service.store.sessions)
    admin = store.create("ops-admin", "admin").key
    with pytest.raises(AppError) as refused:
        store.create("1", "officer")
    assert refused.value.status_code == 422 and "digits" in refused.value.message
    # A registry from before the rule may hold such a name: revoking by those digits is refused as ambiguous.
    legacy = store.create("leaked", "officer").key
    with service.store.sessions.begin() as s:
        s.get(ApiKey, legacy.id).name = str(admin.id)
    with pytest.raises(AppError) as ambiguous:
        store.revoke(str(admin.id))
    assert ambiguous.value.code == "ambiguous"
    assert all(k.revoked_at is None for k in store.list())
    assert store.revoke(legacy.id).revoked_at is not None  # by id (an int) it is clear


def test_rate_limit_answers_429_with_retry_after(settings, service, make_key):
    limited = create_app(settings.model_copy(update={"rate_limit_per_minute": 6, "rate_limit_burst": 3}),
                         service=service)
    one, two = make_key("registrar", "one"), make_key("registrar", "two")
    with TestClient(limited) as client:
        codes = [client.get("/v1/artefacts", headers=bearer(one)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = client.get("/v1/artefacts", headers=bearer(one))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 10
        assert client.get("/v1/artefacts", headers=bearer(two)).status_code == 200  # per key
        assert client.get("/healthz").status_code == 200  # health checks are never limited


def test_unknown_keys_from_one_address_are_slowed_with_429(settings, service, make_key):
    guarded = create_app(settings.model_copy(update={"auth_failures_per_minute": 6, "auth_failures_burst": 3}),
                         service=service)
    good = make_key("officer", "desk")
    with TestClient(guarded) as client:
        codes = [client.get("/v1/artefacts", headers=bearer(f"hm_guess{n}")).status_code for n in range(4)]
        assert codes == [401, 401, 401, 429]
        r = client.get("/v1/artefacts", headers=bearer(good))
        # While the address waits, no key is even looked up: a right guess would be an oracle.
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 10
        assert client.get("/v1/artefacts").status_code == 401  # no key at all: nothing guessed, not counted
        assert client.get("/healthz").status_code == 200


def test_a_valid_key_never_counts_as_a_failure(settings, service, make_key):
    guarded = create_app(settings.model_copy(update={"auth_failures_per_minute": 6, "auth_failures_burst": 2}),
                         service=service)
    good = make_key("registrar", "desk")
    with TestClient(guarded) as client:
        assert all(client.get("/v1/artefacts", headers=bearer(good)).status_code == 200 for _ in range(5))


def test_rate_limiter_refills_with_time():
    from app.security.ratelimit import RateLimiter

    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [limiter.check("k") for _ in range(2)] == [0.0, 0.0]
    assert limiter.check("k") == pytest.approx(1.0)
    now[0] += 1.0
    assert limiter.check("k") == 0.0
    assert RateLimiter(per_minute=0, burst=1).check("k") == 0.0
    assert limiter.pending("k") == pytest.approx(1.0) and limiter.pending("other") == 0.0  # looks, takes nothing
    now[0] += 1.0
    assert limiter.pending("k") == 0.0 and limiter.check("k") == 0.0


def test_rate_limiter_forgets_refilled_keys_when_it_holds_too_many(monkeypatch):
    from app.security.ratelimit import RateLimiter

    monkeypatch.setattr(RateLimiter, "MAX_KEYS", 3)
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    for k in "abc":
        limiter.check(k)
    limiter.check("a"), limiter.check("a")  # "a" is empty: it must be remembered
    now[0] += 1.5  # "b" and "c" are full again, "a" is not
    limiter.check("d")
    assert set(limiter._buckets) == {"a", "d"} and limiter.check("a") == 0.0 and limiter.check("a") > 0


def test_a_refunded_attempt_leaves_the_bucket_as_it_was():
    from app.security.ratelimit import RateLimiter

    now = [0.0]
    limiter = RateLimiter(per_minute=1, burst=2, clock=lambda: now[0])
    assert limiter.check("a") == 0 and limiter.check("a") == 0 and limiter.check("a") > 0
    limiter.refund("a")
    assert limiter.check("a") == 0 and limiter.check("a") > 0
    for _ in range(5):
        limiter.refund("b")  # never more than the burst
    assert limiter.check("b") == 0 and limiter.check("b") == 0 and limiter.check("b") > 0


def test_auth_off_acts_as_admin_without_a_key(settings, service):
    with TestClient(create_app(settings.model_copy(update={"auth": False}), service=service)) as client:
        assert client.get("/v1/artefacts").status_code == 200
        assert client.get("/v1/keys").status_code == 200


def test_cli_keys_create_list_revoke(tmp_path, monkeypatch, db_env):
    from typer.testing import CliRunner

    from app.cli import app as cli_app
    from app.core.config import get_settings
    from app.registry.store import RegistryStore

    monkeypatch.setenv("HM_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        made = runner.invoke(cli_app, ["keys", "create", "--name", "desk", "--role", "registrar"])
        assert made.exit_code == 0, made.output
        token = made.stdout.strip().splitlines()[-1]
        assert token.startswith("hm_")
        listed = runner.invoke(cli_app, ["keys", "list"])
        assert "desk" in listed.stdout and "registrar" in listed.stdout and token not in listed.stdout
        bad = runner.invoke(cli_app, ["keys", "create", "--name", "x", "--role", "root"])
        assert bad.exit_code != 0 and "Unknown role" in bad.output
        assert runner.invoke(cli_app, ["keys", "revoke", "desk"]).exit_code == 0
        store = RegistryStore(get_settings().db_url, tmp_path / "data" / "photos")
        assert KeyStore(store.sessions).authenticate(token) is None
        store.close()
    finally:
        get_settings.cache_clear()
