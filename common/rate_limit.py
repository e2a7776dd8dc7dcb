"""The one rate limiter of both services: a token bucket per key (an owner, a user), in memory.

The image-store limits uploads per owner (IMAGE_UPLOAD_RATE_PER_MINUTE), the vision-gateway
stream requests per user (VISION_STREAM_RATE_PER_MINUTE). Each replica limits on its own, so the
effective cluster limit is replicas × the setting; that is the price of not needing a shared
store for a guard against floods.

A bucket holds `per_minute` tokens (the burst) and refills at `per_minute` a minute, so a key idle
for a minute has a full bucket again: that is when it is forgotten, and a flood of keys cannot
grow the map past `max_keys` either (the least recently seen key goes first; it comes back with
a full bucket).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

from cachetools import TTLCache

from common.errors import RateLimited

DEFAULT_MAX_KEYS: Final = 100_000
_REFILL_SECONDS: Final = 60.0  # an empty bucket is full again after a minute


class RateLimiter:
    """`per_minute` requests per key per minute, in bursts of up to `per_minute`; 0 disables it.

    `refusal` is the 429 message; `{per_minute}` and `{retry_after}` (whole seconds) in it are
    filled in.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        refusal: str,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 0 or max_keys < 1:
            raise ValueError("per_minute must be >= 0 and max_keys >= 1")
        self.per_minute = per_minute
        self._refusal = refusal
        self._clock = clock
        # key -> (tokens, when counted)
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(max_keys, ttl=_REFILL_SECONDS, timer=clock)

    def take(self, key: str) -> None:
        """Take one of `key`'s tokens, or raise RateLimited with Retry-After = the whole seconds
        until the next one (a refused request takes nothing)."""
        if not self.per_minute:
            return
        now = self._clock()
        tokens, counted = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - counted) * self.per_minute / _REFILL_SECONDS)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return
        self._buckets[key] = (tokens, now)
        retry_after = math.ceil((1.0 - tokens) * _REFILL_SECONDS / self.per_minute)
        raise RateLimited(
            self._refusal.format(per_minute=self.per_minute, retry_after=retry_after), retry_after=retry_after
        )

    def __len__(self) -> int:
        """Keys remembered now (the others have a full bucket)."""
        return len(self._buckets)
