"""Rate limits: a token bucket per key (an API key, or a client address for failed sign-ins).

``RateLimiter`` counts in the memory of one server process; ``SharedRateLimiter`` counts in the registry
database (table ``rate_buckets``), so that a key's limit holds across every replica that shares it.
``make_limiter`` picks one by ``HM_SHARED_RATE_LIMITS`` (default: shared on PostgreSQL, in memory on SQLite).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Connection, Engine, TextClause, text
from sqlalchemy.exc import SQLAlchemyError

from app.core.config import Settings

log = logging.getLogger(__name__)


class Limiter(Protocol):
    """What the middleware and the web pages use of a rate limiter, in memory or shared."""

    def check(self, key: object) -> float: ...

    def refund(self, key: object) -> None: ...

    def pending(self, key: object) -> float: ...

    @staticmethod
    def retry_after_header(wait: float) -> str: ...


class RateLimiter:
    """``per_minute`` requests a minute on average, up to ``burst`` at once; ``per_minute=0`` is no limit."""

    # Keys counted at most (client addresses can be many): past it, keys whose buckets are full again
    # are forgotten, which changes nothing for them.
    MAX_KEYS = 10_000

    def __init__(self, per_minute: float, burst: int, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = max(1, burst)
        self.clock = clock
        self._buckets: dict[object, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    def _tokens(self, key, now: float) -> float:
        """``key``'s tokens at ``now``: what it had, refilled since, at most ``burst`` (call under the lock)."""
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.rate)

    def _forget_full(self, now: float) -> None:
        for k in [k for k in self._buckets if self._tokens(k, now) >= self.burst]:
            del self._buckets[k]

    def check(self, key) -> float:
        """Take one token for ``key``: 0.0 when allowed, else the seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            if len(self._buckets) >= self.MAX_KEYS and key not in self._buckets:
                self._forget_full(now)
            tokens = self._tokens(key, now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def refund(self, key) -> None:
        """Give back the token ``check`` took: for attempts counted before their outcome was known (a sign-in
        counts first, so that guesses sent at the same moment cannot all pass the check)."""
        if self.rate <= 0:
            return
        now = self.clock()
        with self._lock:
            self._buckets[key] = (min(float(self.burst), self._tokens(key, now) + 1.0), now)

    def pending(self, key) -> float:
        """Seconds before ``key`` may try again, without taking a token (0.0: it may now)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens = self._tokens(key, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after_header(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


# The SQL of the shared buckets, per database. The time is the database's own clock on PostgreSQL (replicas on
# several machines disagree on theirs); on SQLite, whose file only processes of one machine share, it is this
# machine's clock, bound as :now. A bucket's tokens at time T: what it had, refilled since ``updated``, at most
# :burst; a clock that stepped back refills nothing, and ``updated`` never goes back.
_SQL = {
    "postgresql": {"now": "CAST(extract(epoch FROM clock_timestamp()) AS double precision)",
                   "least": "least", "greatest": "greatest", "skip_locked": " FOR UPDATE SKIP LOCKED"},
    "sqlite": {"now": ":now", "least": "min", "greatest": "max", "skip_locked": ""},  # SQLite: one writer
}


def _statements(dialect: str) -> dict[str, TextClause]:
    sql = _SQL["postgresql" if dialect == "postgresql" else "sqlite"]
    least, greatest, now = sql["least"], sql["greatest"], sql["now"]

    def refilled(at: str) -> str:
        return f"{least}(:burst, rate_buckets.tokens + {greatest}(0.0, {at} - rate_buckets.updated) * :rate)"

    return {
        # One statement takes a token, atomically: a new key's row starts full less this one; an existing row is
        # updated only if it has a token (the row stays locked while it is decided), so a returned row means
        # allowed, none refused. ``excluded.updated`` is the statement's one reading of the clock.
        "take": text(f"""
            INSERT INTO rate_buckets ("key", tokens, updated) VALUES (:key, :burst - 1.0, {now})
            ON CONFLICT ("key") DO UPDATE
            SET tokens = {refilled('excluded.updated')} - 1.0,
                updated = {greatest}(rate_buckets.updated, excluded.updated)
            WHERE {refilled('excluded.updated')} >= 1.0
            RETURNING tokens"""),
        "tokens": text(f'SELECT {refilled(now)} FROM rate_buckets WHERE "key" = :key'),
        "refund": text(f"""
            UPDATE rate_buckets SET tokens = {least}(:burst, tokens + {greatest}(0.0, clock.t - updated) * :rate + 1.0),
                                    updated = {greatest}(updated, clock.t)
            FROM (SELECT {now} AS t) AS clock
            WHERE "key" = :key"""),
        # Rows of buckets full again (untouched for the time an empty one takes to refill) are forgotten: a
        # missing row is a full bucket. Rows another replica is using are skipped, not waited for.
        "forget_full": text(f"""
            DELETE FROM rate_buckets WHERE "key" IN (
                SELECT "key" FROM rate_buckets
                WHERE updated < {now} - :full_after AND substr("key", 1, CAST(:prefix_len AS INTEGER)) = :prefix
                {sql['skip_locked']})"""),
    }


class SharedRateLimiter:
    """``RateLimiter``'s buckets as rows of the registry database's ``rate_buckets`` (key: ``name:key``), shared
    by every process and replica on that database. ``database`` is its engine, or a callable that gives it when
    needed (the app's service, which holds the engine, is made when the app starts, after its limiters)."""

    KEY_LENGTH = 200  # rate_buckets.key
    CLEANUP_EVERY_S = 60.0  # each limiter of each process forgets full buckets at most this often
    WARN_EVERY_S = 60.0

    def __init__(self, name: str, per_minute: float, burst: int, database: Engine | Callable[[], Engine]):
        if not name or ":" in name or len(name) > 50:
            raise ValueError(f"a limiter's name is 1 to 50 characters without ':', not {name!r}")
        self.name = name
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self._engine: Callable[[], Engine] = database if callable(database) else (lambda: database)
        self._statements: dict[str, dict[str, TextClause]] = {}
        self._next_cleanup = 0.0
        self._warned_at: float | None = None
        self._lock = threading.Lock()

    def row_key(self, key: object) -> str:
        row = f"{self.name}:{key}"
        if len(row) <= self.KEY_LENGTH:
            return row
        return f"{self.name}:sha256:{hashlib.sha256(str(key).encode('utf-8', 'surrogatepass')).hexdigest()}"

    def check(self, key: object) -> float:
        """Take one token for ``key``: 0.0 when allowed, else the seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        self._forget_full_now_and_then()
        try:
            with self._engine().begin() as conn:
                taken = conn.execute(self._sql(conn, "take"), self._params(key)).first()
                if taken is not None:
                    return 0.0
                tokens = conn.execute(self._sql(conn, "tokens"), self._params(key)).scalar()
        except SQLAlchemyError as exc:
            return self._failed_open(exc)
        # Refused: the wait as the bucket stands now (it may have refilled since; a refusal still waits a little).
        return max((1.0 - float(tokens if tokens is not None else self.burst)) / self.rate, 0.001)

    def refund(self, key: object) -> None:
        """Give back the token ``check`` took (see ``RateLimiter.refund``)."""
        if self.rate <= 0:
            return
        try:
            with self._engine().begin() as conn:
                conn.execute(self._sql(conn, "refund"), self._params(key))
        except SQLAlchemyError as exc:
            self._failed_open(exc)

    def pending(self, key: object) -> float:
        """Seconds before ``key`` may try again, without taking a token (0.0: it may now)."""
        if self.rate <= 0:
            return 0.0
        try:
            with self._engine().connect() as conn:
                tokens = conn.execute(self._sql(conn, "tokens"), self._params(key)).scalar()
        except SQLAlchemyError as exc:
            return self._failed_open(exc)
        return 0.0 if tokens is None or tokens >= 1.0 else (1.0 - float(tokens)) / self.rate

    @staticmethod
    def retry_after_header(wait: float) -> str:
        return RateLimiter.retry_after_header(wait)

    def forget_full(self) -> None:
        """Delete the rows of this limiter's buckets that are full again."""
        prefix = self.name + ":"
        with self._engine().begin() as conn:
            conn.execute(self._sql(conn, "forget_full"), {"now": time.time(), "full_after": self.burst / self.rate,
                                                          "prefix": prefix, "prefix_len": len(prefix)})

    def _forget_full_now_and_then(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next_cleanup:
                return
            self._next_cleanup = now + self.CLEANUP_EVERY_S
        try:
            self.forget_full()
        except SQLAlchemyError as exc:  # tried again next time; the request is counted as usual
            log.warning("rate limit %r: full buckets not forgotten (%s)", self.name, type(exc).__name__)

    def _params(self, key: object) -> dict[str, object]:
        return {"key": self.row_key(key), "burst": self.burst, "rate": self.rate, "now": time.time()}

    def _sql(self, conn: Connection, name: str) -> TextClause:
        dialect = conn.dialect.name
        statements = self._statements.get(dialect)
        if statements is None:
            statements = self._statements[dialect] = _statements(dialect)
        return statements[name]

    def _failed_open(self, exc: SQLAlchemyError) -> float:
        # Open, not closed: the API keys live in the same database, so while it is unreachable no key can be
        # checked either and nothing gets past authentication; refusing here would only turn a brief outage (or
        # one lost connection) into a 429 for everyone. The warning says that the limits are off meanwhile.
        now = time.monotonic()
        with self._lock:
            warn = self._warned_at is None or now - self._warned_at >= self.WARN_EVERY_S
            if warn:
                self._warned_at = now
        if warn:
            first_line = (str(exc).splitlines() or [""])[0]
            log.warning("rate limit %r not applied: the registry database did not answer (%s: %s)", self.name,
                        type(exc).__name__, first_line)
        return 0.0


def shared_rate_limits(settings: Settings) -> bool:
    """Whether the rate limits count in the registry database (``HM_SHARED_RATE_LIMITS``, by default on PostgreSQL
    only: SQLite's processes share one machine, and each counting in memory costs no database write)."""
    if settings.shared_rate_limits is not None:
        return settings.shared_rate_limits
    return settings.db_url.startswith("postgresql")


def make_limiter(settings: Settings, name: str, per_minute: float, burst: int,
                 database: Callable[[], Engine]) -> Limiter:
    """A limiter named ``name`` (its buckets' prefix in the database), shared or in memory as the settings say."""
    if shared_rate_limits(settings):
        return SharedRateLimiter(name, per_minute, burst, database)
    return RateLimiter(per_minute, burst)
