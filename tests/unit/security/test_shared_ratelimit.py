"""Rate limits shared by replicas: two ``SharedRateLimiter``s over one registry database (each with its own engine,
as two server processes have) count in the same buckets."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.registry.store import RegistryStore
from app.security.models import RateBucket
from app.security.ratelimit import RateLimiter, SharedRateLimiter, make_limiter

# Each test runs on SQLite and on PostgreSQL (tests/conftest.py, tests/pg.py).
pytestmark = pytest.mark.databases


@pytest.fixture
def replicas(settings, tmp_path):
    """The engines of two processes on the test's registry database."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stores = [RegistryStore(settings.db_url, tmp_path / f"photos-{n}") for n in (1, 2)]
    yield [store.engine for store in stores]
    for store in stores:
        store.close()


def pair(replicas, per_minute: float, burst: int, name: str = "requests") -> tuple[SharedRateLimiter, ...]:
    return tuple(SharedRateLimiter(name, per_minute, burst, engine) for engine in replicas)


def buckets(engine) -> dict[str, float]:
    with Session(engine) as s:
        return {row.key: row.tokens for row in s.scalars(select(RateBucket))}


def test_replicas_share_one_budget(replicas):
    one, two = pair(replicas, per_minute=6, burst=3)  # a token every 10 s
    assert [one.check(7), two.check(7), one.check(7)] == [0.0, 0.0, 0.0]
    wait = two.check(7)
    assert 9.0 < wait <= 10.0  # the 4th request, on the other replica: refused until a token is back
    assert one.check(7) > 0 and 0 < one.pending(7) <= 10.0
    assert two.check(8) == 0.0  # another key has its own bucket
    other = SharedRateLimiter("auth_failures", 6, 3, replicas[1])
    assert other.check(7) == 0.0  # and so has another limiter with the same key
    assert set(buckets(replicas[0])) == {"requests:7", "requests:8", "auth_failures:7"}


def test_the_bucket_refills_at_the_rate(replicas):
    one, two = pair(replicas, per_minute=600, burst=2)  # a token every 0.1 s
    assert one.check("k") == 0.0 and two.check("k") == 0.0
    assert one.check("k") > 0
    time.sleep(0.12)
    assert two.check("k") == 0.0


def test_a_refund_on_one_replica_gives_the_token_back_to_both(replicas):
    one, two = pair(replicas, per_minute=6, burst=2)
    assert one.check("10.0.0.1") == 0.0 and two.check("10.0.0.1") == 0.0
    assert one.pending("10.0.0.1") > 0
    two.refund("10.0.0.1")
    assert one.pending("10.0.0.1") == 0.0 and one.check("10.0.0.1") == 0.0
    assert two.check("10.0.0.1") > 0
    # A refund never fills a bucket past its burst, nor makes a row for a key never counted (full already).
    one.refund("fresh"), one.refund("fresh")
    assert "requests:fresh" not in buckets(replicas[0])
    assert [two.check("fresh") for _ in range(3)][2] > 0


def test_pending_takes_no_token(replicas):
    one, two = pair(replicas, per_minute=6, burst=1)
    assert one.pending("k") == 0.0 and two.pending("k") == 0.0  # never counted: no row, full bucket
    assert "requests:k" not in buckets(replicas[0])
    assert one.check("k") == 0.0
    first, again = two.pending("k"), one.pending("k")
    assert 9.0 < first <= 10.0 and 9.0 < again <= first  # asking twice takes nothing
    assert two.check("k") > 0


def test_no_limit_touches_no_database():
    unreachable = create_engine("sqlite:////nonexistent-folder/none.db")
    limiter = SharedRateLimiter("requests", 0, 1, unreachable)
    assert [limiter.check("k") for _ in range(5)] == [0.0] * 5 and limiter.pending("k") == 0.0


def test_concurrent_requests_on_both_replicas_never_get_more_than_the_budget(replicas):
    burst, per_minute = 5, 600  # 10 tokens a second
    limiters = pair(replicas, per_minute=per_minute, burst=burst)
    allowed: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def hammer(n: int) -> None:
        limiter = limiters[n % 2]
        mine = 0
        try:
            start.wait()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                mine += limiter.check("busy-key") == 0.0
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        allowed.append(mine)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    assert not errors
    # The first burst at once, then at most the refill over the time the threads ran (with a token of slack for
    # the clock's reading at each end).
    assert burst <= sum(allowed) <= burst + elapsed * per_minute / 60 + 1, (allowed, elapsed)


def test_buckets_full_again_are_forgotten(replicas):
    one, two = pair(replicas, per_minute=6000, burst=2)  # refilled from empty in 0.02 s
    slow = SharedRateLimiter("slow", 6, 2, replicas[1])
    one.check("a"), two.check("b"), slow.check("a")
    assert set(buckets(replicas[0])) == {"requests:a", "requests:b", "slow:a"}
    time.sleep(0.05)
    two.forget_full()
    assert set(buckets(replicas[0])) == {"slow:a"}  # another limiter's rows are its own to forget
    assert one.check("a") == 0.0 and one.check("a") == 0.0  # a forgotten bucket is a full one


def test_long_keys_fit_the_column(replicas):
    one, two = pair(replicas, per_minute=6, burst=1)
    key = "x" * 500  # an address from a header, say
    assert one.check(key) == 0.0 and two.check(key) > 0
    (row,) = buckets(replicas[0])
    assert row.startswith("requests:sha256:") and len(row) <= 200


def test_an_unreachable_database_lets_requests_through_with_a_warning(caplog):
    unreachable = create_engine("sqlite:////nonexistent-folder/none.db")
    limiter = SharedRateLimiter("requests", 6, 1, lambda: unreachable)
    with caplog.at_level(logging.WARNING, logger="app.security.ratelimit"):
        assert [limiter.check("k") for _ in range(3)] == [0.0] * 3
        assert limiter.pending("k") == 0.0
        limiter.refund("k")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    not_applied = [w for w in warnings if "rate limit 'requests' not applied" in w]
    assert len(not_applied) == 1, warnings  # said once a minute, not at every request


def test_the_setting_chooses_shared_or_in_memory(tmp_path):
    def kind(**kw) -> type:
        settings = Settings(data_dir=tmp_path, **kw)
        return type(make_limiter(settings, "requests", 60, 10, lambda: None))  # type: ignore[arg-type,return-value]

    assert kind() is RateLimiter  # SQLite: each process counts in memory
    assert kind(database_url="postgresql+psycopg://hm@db/heritage") is SharedRateLimiter
    assert kind(shared_rate_limits=True) is SharedRateLimiter
    assert kind(database_url="postgresql+psycopg://hm@db/heritage", shared_rate_limits=False) is RateLimiter
