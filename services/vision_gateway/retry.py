"""Which upstream failures the gateway tries again, and the 503 when no attempt succeeded.

The attempts and their waits are common.retry's `attempts` policy: full jitter between 0 and
0.2 s·2^k (at most 2 s), for work that has not produced output yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import aiohttp

from common.errors import UpstreamUnavailable
from common.retry import attempts

T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.2
MAX_DELAY_SECONDS = 2.0


class Retryable(Exception):
    """Raised by an attempt that may succeed if tried again (connection failure, 5xx).

    `reason` says what happened in words a client may read ("could not connect"); the exception's
    own text is `detail` (the status, path and body of an upstream's 5xx), for the log only.
    `retry_after` keeps the upstream's Retry-After, so the 503 that ends the retries can pass it on.
    """

    def __init__(self, reason: str, *, detail: str = "", retry_after: int | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.retry_after = retry_after


async def call_upstream(
    attempt: Callable[[], Awaitable[T]], *, retries: int, on_retry: Callable[[], None], unavailable: str
) -> T:
    """`attempt`, tried again `retries` times while it raises Retryable; then the contract's 503."""
    policy = attempts(
        retries + 1,
        retry_on=Retryable,
        first_delay=FIRST_DELAY_SECONDS,
        max_delay=MAX_DELAY_SECONDS,
        on_retry=lambda _failure, _delay: on_retry(),
    )
    try:
        return await policy(attempt)
    except Retryable as exc:
        raise UpstreamUnavailable(f"{unavailable}: {exc.reason}", retry_after=exc.retry_after) from exc


def retry_after_seconds(header: str | None) -> int | None:
    """An upstream's Retry-After in whole seconds; an HTTP date or garbage is dropped, not guessed."""
    if header is None:
        return None
    value = header.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        return None
    return int(value)


@contextlib.contextmanager
def connection_failures_are_retryable(
    count_failure: Callable[[], None], *, timeout: aiohttp.ClientTimeout | None = None
) -> Iterator[None]:
    """A refused, reset or timed-out connection, or a body cut short, is worth another attempt."""
    try:
        yield
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
        count_failure()
        raise Retryable(connection_failure(exc, timeout)) from exc


def could_not_connect(failure: Retryable) -> bool:
    """Whether no connection was made at all (refused, unreachable, no name, connect timeout): the
    upstream's host is down, as opposed to one that answered badly (a 5xx, a body cut short)."""
    return isinstance(failure.__cause__, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


def connection_failure(exc: BaseException, timeout: aiohttp.ClientTimeout | None = None) -> str:
    """What happened to a connection, in words for a client (the exception itself is for the log)."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return "could not connect"
    if isinstance(exc, TimeoutError):
        # aiohttp's overall timeout is a bare TimeoutError: say which clock it was.
        if not isinstance(exc, aiohttp.ServerTimeoutError) and timeout is not None and timeout.total is not None:
            return f"no answer within {timeout.total:g} s"
        return "no answer in time"
    return "the connection broke"
