"""Local rate limiting: token buckets, one per route (or per route and caller).

A bucket holds up to ``burst`` tokens and refills at ``requests_per_second``; a request
takes one token or is refused with the time until the next token (the ``Retry-After``).
Time is passed in, so tests drive the clock.
"""

from __future__ import annotations

from typing import Final

from localmesh.config.model import RateLimit

_MAX_SOURCES: Final = 10_000


class TokenBucket:
    __slots__ = ("_last", "_rate", "_tokens", "burst")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._last = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; otherwise seconds until one is available."""
        tokens = self._tokens + (now - self._last) * self._rate
        tokens = min(tokens, self.burst)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self._rate if self._rate > 0 else float("inf")

    @property
    def full(self) -> bool:
        return self._tokens >= self.burst


class RateLimiter:
    """The buckets of one ``RateLimit``: a single bucket, or one per caller."""

    __slots__ = ("_buckets", "_shared", "config")

    def __init__(self, config: RateLimit, now: float) -> None:
        self.config = config
        self._shared = (
            None
            if config.per_source
            else TokenBucket(config.requests_per_second, config.burst, now)
        )
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, source: str, now: float) -> float:
        """0.0 when allowed; otherwise the seconds to wait."""
        if self._shared is not None:
            return self._shared.take(now)
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= _MAX_SOURCES:  # forget callers that are back to full
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full}
            cfg = self.config
            bucket = self._buckets[source] = TokenBucket(cfg.requests_per_second, cfg.burst, now)
        return bucket.take(now)
