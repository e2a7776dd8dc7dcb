"""Per-owner upload rate limit: a token bucket per owner, in this process's memory.

Each replica limits on its own, so the effective cluster limit is replicas × the setting; that
is the price of not needing a shared store for a guard against floods.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class OwnerRateLimiter:
    def __init__(
        self,
        per_minute: int,
        *,
        max_owners: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = per_minute / 60.0
        self._capacity = float(per_minute)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_owners = max_owners
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def acquire(self, owner_id: str) -> float:
        """Take one token; returns 0 when allowed, else seconds until a token is available."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens, updated = self._buckets.pop(owner_id, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - updated) * self._rate)
        if tokens >= 1:
            self._buckets[owner_id] = (tokens - 1, now)
            wait = 0.0
        else:
            self._buckets[owner_id] = (tokens, now)
            wait = (1 - tokens) / self._rate
        while len(self._buckets) > self._max_owners:
            self._buckets.popitem(last=False)  # forget the least recently seen owner
        return wait

    @staticmethod
    def retry_after_header(wait: float) -> int:
        return max(1, math.ceil(wait))
