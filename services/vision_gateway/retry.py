"""Retry with exponential backoff and full jitter, for work that has not produced output yet."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Retryable(Exception):
    """Raised by an attempt that may succeed if tried again (connection failure, 5xx)."""


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    retries: int,
    base_delay: float = 0.2,
    max_delay: float = 2.0,
    on_retry: Callable[[], None] | None = None,
) -> T:
    for number in range(retries + 1):
        try:
            return await attempt()
        except Retryable:
            if number == retries:
                raise
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(random.uniform(0, min(max_delay, base_delay * 2**number)))  # noqa: S311
    raise AssertionError("unreachable")
