"""Replicas share the web's state through the registry database: two apps, each with its own data directory and
service, on one database, serve the same signed-in officers (the cookie's secret, the kept searches, sign-out)
and count the same rate limits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.main import create_app
from app.security.keys import KeyStore
from app.security.models import ServiceSecret, WebSearch
from app.service import MatchingService
from app.web.searches import SearchKeeper
from app.web.session import COOKIE, SALT, SECRET_NAME, SessionCodec
from tests.conftest import bearer, jpeg_bytes, random_photo
from tests.web.test_web import csrf_of, sign_in, web_search

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases


def replica_settings(settings: Settings, name: str, **update) -> Settings:
    """A replica's settings: its own data directory, the test's registry database (named even on SQLite, whose
    default is a file in the data directory), no HM_WEB_SECRET."""
    return settings.model_copy(update={"data_dir": settings.data_dir.parent / name, "database_url": settings.db_url,
                                       "web_secret": None, **update})


@pytest.fixture
def replica(settings, encoder):
    """Starts a replica's service (each its own, as separate processes have) on the test's registry database."""
    started: list[MatchingService] = []
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    def start(name: str, **update) -> tuple[Settings, MatchingService]:
        own = replica_settings(settings, name, **update)
        started.append(MatchingService(own, encoder=encoder).start())
        return own, started[-1]

    yield start
    for service in started:
        service.close()


def test_a_signed_in_officer_is_served_by_any_replica(replica):
    settings_a, service_a = replica("replica-a")
    settings_b, service_b = replica("replica-b")
    key = KeyStore(service_a.store.sessions).create("officer-key", "officer").token
    with TestClient(create_app(settings_a, service=service_a)) as a, \
            TestClient(create_app(settings_b, service=service_b)) as b:
        assert sign_in(a, key).status_code == 303
        b.cookies.set(COOKIE, a.cookies[COOKIE])  # the same browser, its next request answered by B
        assert b.get("/search", follow_redirects=False).status_code == 200  # B accepts A's cookie

        results = web_search(a, jpeg_bytes(random_photo(3)), name="seen-on-a.jpg")
        assert b.get(results).status_code == 200  # a search kept on A opens on B, with its case report
        report = b.get(results + "/report")
        assert report.status_code == 200 and "seen-on-a.jpg" in report.text
        assert b.get(results + "/query.jpg").content[:2] == b"\xff\xd8"

        signout = b.post("/signout", data={"csrf_token": csrf_of(b)}, follow_redirects=False)
        assert signout.status_code == 303
        # Signed out on B: the same cookie, still held by A's client, is refused on A, and its searches are gone.
        assert a.get("/search", follow_redirects=False).headers["location"].startswith("/signin")
        assert b.get(results, follow_redirects=False).status_code == 303
    with Session(service_a.store.engine) as s:
        assert s.scalar(select(func.count()).select_from(WebSearch)) == 0
    for settings in (settings_a, settings_b):
        assert not (settings.data_dir / "web-secret").exists() and not (settings.data_dir / "web-searches.db").exists()


def test_rate_limits_hold_across_replicas(replica):
    limited = {"rate_limit_per_minute": 6, "rate_limit_burst": 2, "shared_rate_limits": True}
    settings_a, service_a = replica("replica-a", **limited)
    settings_b, service_b = replica("replica-b", **limited)
    key = KeyStore(service_a.store.sessions).create("officer-key", "officer").token
    photo = {"image": ("q.jpg", jpeg_bytes(random_photo(4)), "image/jpeg")}
    with TestClient(create_app(settings_a, service=service_a)) as a, \
            TestClient(create_app(settings_b, service=service_b)) as b:
        assert a.post("/v1/search", headers=bearer(key), files=photo).status_code == 200
        assert b.post("/v1/search", headers=bearer(key), files=photo).status_code == 200
        refused = a.post("/v1/search", headers=bearer(key), files=photo)
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 10
        assert b.post("/v1/search", headers=bearer(key), files=photo).status_code == 429


def test_a_secret_kept_by_an_earlier_version_keeps_its_cookies_valid(replica):
    legacy = "a secret an earlier version kept in its data directory"
    settings_a, service_a = replica("replica-a")
    settings_b, service_b = replica("replica-b")
    (settings_a.data_dir / "web-secret").write_text(legacy + "\n")
    key_id = KeyStore(service_a.store.sessions).create("officer-key", "officer").key.id
    old_cookie = URLSafeTimedSerializer(legacy, salt=SALT).dumps({"s": "old-session", "c": "csrf", "k": key_id})
    with TestClient(create_app(settings_a, service=service_a), cookies={COOKIE: old_cookie}) as a:
        assert a.get("/search", follow_redirects=False).status_code == 200
    with TestClient(create_app(settings_b, service=service_b), cookies={COOKIE: old_cookie}) as b:
        assert b.get("/search", follow_redirects=False).status_code == 200  # B has no file: the database's secret
    with Session(service_b.store.engine) as s:
        assert s.get(ServiceSecret, SECRET_NAME).value == legacy


def test_replicas_starting_together_agree_on_one_secret(replica):
    services = [replica(f"replica-{n}")[1] for n in range(2)]
    codecs = [SessionCodec(service.settings, service.store.engine) for service in services for _ in range(3)]
    together = threading.Barrier(len(codecs))
    secrets: list[str | bytes] = []

    def first_cookie(codec: SessionCodec) -> None:
        together.wait()
        secrets.append(codec.serializer.secret_key)

    threads = [threading.Thread(target=first_cookie, args=(codec,)) for codec in codecs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(secrets) == len(codecs) and len(set(secrets)) == 1


def test_replicas_keeping_searches_at_once_keep_the_bound(replica, tmp_path: Path):
    services = [replica(f"replica-{n}")[1] for n in range(2)]
    response = services[0].search(jpeg_bytes(random_photo(5)))
    keepers = [SearchKeeper(service.store.engine, capacity=5) for service in services]
    errors: list[BaseException] = []
    together = threading.Barrier(4)

    def keep_many(n: int) -> None:
        together.wait()
        try:
            for i in range(15):
                keepers[n % 2].keep(sid=f"s{n}", key_id=n, key_name="desk", role="officer", response=response,
                                    display_jpeg=b"\xff\xd8", filename=f"{n}-{i}.jpg")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=keep_many, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with Session(services[0].store.engine) as s:
        count = s.scalar(select(func.count()).select_from(WebSearch))
    assert 1 <= count <= 5 + 3  # at most a few over while several insert at the very same moment
    last = keepers[1].keep(sid="s9", key_id=9, key_name="desk", role="officer", response=response,
                           display_jpeg=b"\xff\xd8", filename="last.jpg")
    with Session(services[0].store.engine) as s:
        assert s.scalar(select(func.count()).select_from(WebSearch)) <= 5  # alone again: the bound holds exactly
    assert keepers[0].get(last.id, "s9", 9) is not None
