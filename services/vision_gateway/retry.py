"""Retry with exponential backoff and full jitter, for work that has not produced output yet."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import aiohttp

from common.errors import UpstreamUnavailable

T = TypeVar("T")


class Retryable(Exception):
    """Raised by an attempt that may succeed if tried again (connection failure, 5xx).

    `retry_after` keeps the upstream's Retry-After, so the 503 that ends the retries can pass it on.
    """

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


async def call_upstream(
    attempt: Callable[[], Awaitable[T]], *, retries: int, on_retry: Callable[[], None], unavailable: str
) -> T:
    """with_retries, then the contract's 503 when every attempt failed."""
    try:
        return await with_retries(attempt, retries=retries, on_retry=on_retry)
    except Retryable as exc:
        raise UpstreamUnavailable(f"{unavailable}: {exc}", retry_after=exc.retry_after) from exc


def retry_after_seconds(header: str | None) -> int | None:
    """An upstream's Retry-After in whole seconds; an HTTP date or garbage is dropped, not guessed."""
    if header is None:
        return None
    value = header.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        return None
    return int(value)


@contextlib.contextmanager
def connection_failures_are_retryable(count_failure: Callable[[], None]) -> Iterator[None]:
    """A refused, reset or timed-out connection is worth another attempt."""
    try:
        yield
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        count_failure()
        raise Retryable(str(exc) or type(exc).__name__) from exc
