"""Shared fixtures: one offline encoder per session, a fresh data directory per test."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from app.core.config import Settings
from app.embedding.models.efficientnet import EfficientNetLiteEncoder

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(os.environ.get("HM_BENCHMARKS_DIR", ROOT.parent / "shared" / "benchmarks"))


@pytest.fixture(autouse=True)
def _local_principal():
    """Each test starts as the local operator: an in-process CLI call sets the acting principal for
    the rest of its thread, as it should in a real CLI process."""
    from app.security.actor import LOCAL, reset_principal, set_principal

    token = set_principal(LOCAL)
    yield
    reset_principal(token)


@pytest.fixture(scope="session")
def encoder() -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder().load()


DATABASES = ("sqlite", "postgresql")


def pytest_configure(config):
    config.addinivalue_line("markers", "databases: run each test of the module (or the test) on SQLite and on "
                            "PostgreSQL: the `settings` fixture's registry database (tests/pg.py)")
    config.addinivalue_line("markers", "sqlite_only(reason): in a `databases` module, a test that runs on SQLite "
                            "only, and why")


def pytest_generate_tests(metafunc):
    """``databases``-marked tests that use the registry database run once per database, ids [sqlite] and
    [postgresql]; the others use SQLite."""
    if ("db_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("databases")
            and not metafunc.definition.get_closest_marker("sqlite_only")):
        metafunc.parametrize("db_backend", DATABASES, indirect=True)


@pytest.fixture(scope="session")
def pg_server():
    """A throw-away PostgreSQL server for the session (tests/pg.py); the tests that need it skip, saying why,
    where none can be started, or fail under HM_REQUIRE_POSTGRES=1 (CI)."""
    from tests.pg import PgServer, PgUnavailable

    try:
        server = PgServer.start()
    except PgUnavailable as exc:
        if os.environ.get("HM_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (HM_REQUIRE_POSTGRES=1) but: {exc}", pytrace=False)
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def db_backend(request) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(request, db_backend):
    """The registry database's URL for ``settings``: None (SQLite in the data directory), or a fresh PostgreSQL
    database at the newest revision, dropped after the test."""
    if db_backend != "postgresql":
        yield None
        return
    server = request.getfixturevalue("pg_server")
    url = server.fresh_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def other_database(request, db_backend):
    """Makes another registry database of the test's kind: None for SQLite (a new data directory has its own),
    a fresh PostgreSQL database otherwise (dropped after the test)."""
    made: list[str] = []

    def make() -> str | None:
        if db_backend != "postgresql":
            return None
        made.append(request.getfixturevalue("pg_server").fresh_database())
        return made[-1]

    yield make
    for url in made:
        request.getfixturevalue("pg_server").drop_database(url)


@pytest.fixture
def db_env(monkeypatch, database_url) -> dict[str, str]:
    """For tests that configure through the environment (the CLI, subprocesses): HM_DATABASE_URL set when the
    test runs on PostgreSQL; returns what to add to a subprocess's environment."""
    if database_url is None:
        monkeypatch.delenv("HM_DATABASE_URL", raising=False)
        return {}
    monkeypatch.setenv("HM_DATABASE_URL", database_url)
    return {"HM_DATABASE_URL": database_url}


@pytest.fixture
def settings(tmp_path: Path, database_url) -> Settings:
    # No rate limits by default: tests send bursts (of bad keys too); tests/api/test_auth.py checks the limits.
    return Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", model="efficientnet-lite0",
                    device="cpu", rate_limit_per_minute=0, auth_failures_per_minute=0, database_url=database_url)


@pytest.fixture
def service(settings, encoder):
    from app.service import MatchingService

    svc = MatchingService(settings, encoder=encoder).start()
    yield svc
    svc.close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def make_key(service):
    """Create an API key of a role on the test service's registry; returns the secret."""
    from app.security.keys import KeyStore

    def make(role: str = "admin", name: str | None = None) -> str:
        return KeyStore(service.store.sessions).create(name or f"test-{role}", role).token

    return make


ROLES = ("admin", "registrar", "officer", "monitor")


@pytest.fixture
def app(settings, service):
    from app.main import create_app

    return create_app(settings, service=service)


@pytest.fixture
def keys(make_key):
    """One key per role, named ``<role>-key``: role -> secret."""
    return {role: make_key(role, f"{role}-key") for role in ROLES}


@pytest.fixture(scope="session")
def coins():
    from app.jobs.demo import coin_crops

    return coin_crops()


def jpeg_bytes(img: Image.Image, quality: int = 90, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def coin_query(crop: Image.Image, rng: random.Random) -> bytes:
    """The core issue's query transform: rotate within +-20 degrees, crop a 5% border, upscale 2.5x,
    brightness and contrast each scaled in [0.7, 1.3], JPEG quality 60."""
    img = crop.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    w, h = img.size
    dx, dy = round(w * 0.05), round(h * 0.05)
    img = img.crop((dx, dy, w - dx, h - dy))
    img = img.resize((round(img.width * 2.5), round(img.height * 2.5)), Image.Resampling.BICUBIC)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    return jpeg_bytes(img, quality=60)


def random_photo(seed: int, size=(320, 240)) -> Image.Image:
    """A textured synthetic photo: smooth random field plus shapes, different for every seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, size[0]), rng.integers(0, size[1])
        x1, y1 = x0 + rng.integers(10, 120), y0 + rng.integers(10, 120)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return img
