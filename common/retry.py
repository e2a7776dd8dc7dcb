"""The one retry helper: every retry loop of both services is a tenacity policy made here.

Each function returns a fresh Policy (a typed `tenacity.AsyncRetrying`) for one run: await it with
the coroutine function and its arguments. It retries only the failures it is told are worth another attempt and,
when it gives up, raises the last failure itself (never tenacity's RetryError). They differ in
when they give up and how long they wait:

- `attempts`: after `count` attempts; waits a random 0..first_delay·2^k, capped at max_delay
  ("full jitter": replicas retrying one upstream spread out instead of arriving together);
- `until`: when the next wait would end past `deadline` seconds from the first attempt; waits
  first_delay·2^k, capped at max_delay;
- `forever`: never; waits first_delay·2^k, capped at max_delay.

`on_retry(failure, delay)` runs before each wait (a metric, a log line); `sleep` is for tests.

The first attempt runs without tenacity: almost every call succeeds at once, and a tenacity run
costs ~65 µs of CPU (more than the database write or upstream call it wraps on a stream's path).
Only a failure worth retrying starts the tenacity run, with that failure as its first attempt, so
attempt numbers, waits, `on_retry` and `until`'s deadline (counted from the first attempt) are
what they were.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    stop_never,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

# Which failures are worth another attempt: exception classes, or a test of the exception.
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
OnRetry = Callable[[BaseException, float], None]
Sleep = Callable[[float], Awaitable[None]]
P = ParamSpec("P")
T = TypeVar("T")


class Policy:
    """One retry run: `await policy(fn, *args, **kwargs)` is `await fn(*args, **kwargs)`, retried."""

    def __init__(self, retrying: Callable[[float], AsyncRetrying], retryable: Callable[[BaseException], bool]) -> None:
        self._retrying = retrying  # given the seconds the first attempt took
        self._retryable = retryable

    async def __call__(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        started = time.monotonic()
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:  # not BaseException: cancellation is never retried
            if not self._retryable(exc):
                raise
            first: list[BaseException] = [exc]
        spent = time.monotonic() - started

        async def attempt(*args: P.args, **kwargs: P.kwargs) -> T:
            if first:
                raise first.pop()  # the failed first attempt, replayed as tenacity's first
            return await fn(*args, **kwargs)

        result: T = await self._retrying(spent)(attempt, *args, **kwargs)
        return result


def attempts(
    count: int,
    *,
    retry_on: RetryOn,
    first_delay: float = 0.0,
    max_delay: float = 0.0,
    on_retry: OnRetry | None = None,
    sleep: Sleep = asyncio.sleep,
) -> Policy:
    """At most `count` attempts, with full-jitter waits between them (none with the default delays)."""
    wait = wait_random_exponential(multiplier=first_delay, max=max_delay)
    return _policy(lambda _spent: stop_after_attempt(count), wait, retry_on, on_retry, sleep)


def until(
    deadline: float,
    *,
    retry_on: RetryOn,
    first_delay: float,
    max_delay: float,
    on_retry: OnRetry | None = None,
    sleep: Sleep = asyncio.sleep,
) -> Policy:
    """Attempts while the next one would still start within `deadline` seconds of the first."""
    wait = wait_exponential(multiplier=first_delay, max=max_delay)
    # tenacity's clock starts after the first attempt; the deadline counts from before it
    return _policy(lambda spent: stop_before_delay(deadline - spent), wait, retry_on, on_retry, sleep)


def forever(
    *,
    retry_on: RetryOn,
    first_delay: float,
    max_delay: float,
    on_retry: OnRetry | None = None,
    sleep: Sleep = asyncio.sleep,
) -> Policy:
    """Attempts until one succeeds (or a failure not in `retry_on`, or cancellation, ends it)."""
    return _policy(
        lambda _spent: stop_never, wait_exponential(multiplier=first_delay, max=max_delay), retry_on, on_retry, sleep
    )


def _policy(
    stop: Callable[[float], stop_base], wait: wait_base, retry_on: RetryOn, on_retry: OnRetry | None, sleep: Sleep
) -> Policy:
    retryable: Callable[[BaseException], bool]
    if isinstance(retry_on, type | tuple):
        classes = retry_on

        def retryable(failure: BaseException) -> bool:
            return isinstance(failure, classes)
    else:
        retryable = retry_on
    retry = retry_if_exception(retryable)

    def before_sleep(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        if on_retry is not None and failure is not None:
            on_retry(failure, state.upcoming_sleep)

    def retrying(spent: float) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop(spent), wait=wait, retry=retry, reraise=True, before_sleep=before_sleep, sleep=sleep
        )

    return Policy(retrying, retryable)
