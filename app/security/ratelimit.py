"""Rate limits: a token bucket per key (an API key, or a client address for failed sign-ins), in the
memory of each server process."""

from __future__ import annotations

import math
import threading
import time


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
