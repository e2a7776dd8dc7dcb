"""The retry helper (common/retry.py): attempt counts, waits, deadline, what is and is not retried.

Waits go to a fake sleep that records them, except in the deadline test, which needs real time
and keeps it to a fraction of a second.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from common.errors import UpstreamUnavailable
from common.retry import attempts, forever, until
from services.vision_gateway.retry import Retryable, call_upstream


class Flaky(Exception):
    pass


class Failing:
    """An attempt that fails `failures` times (or always) before it answers "done"."""

    def __init__(self, failures: int | None = None, error: type[Exception] = Flaky) -> None:
        self.failures, self.error, self.calls = failures, error, 0
        self.started: list[float] = []

    async def __call__(self) -> str:
        self.calls += 1
        self.started.append(time.monotonic())
        if self.failures is None or self.calls <= self.failures:
            raise self.error(f"attempt {self.calls}")
        return "done"


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def test_attempts_stop_at_the_count_and_raise_the_last_failure_itself() -> None:
    attempt, sleeps, retried = Failing(), Sleeps(), []
    policy = attempts(
        3,
        retry_on=Flaky,
        first_delay=0.2,
        max_delay=2.0,
        on_retry=lambda failure, delay: retried.append((str(failure), delay)),
        sleep=sleeps,
    )
    with pytest.raises(Flaky, match="attempt 3"):
        await policy(attempt)
    assert attempt.calls == 3
    assert [message for message, _ in retried] == ["attempt 1", "attempt 2"]
    assert [delay for _, delay in retried] == sleeps


async def test_attempts_wait_with_full_jitter_under_a_doubling_cap() -> None:
    """Wait k (from 0) is uniform in 0..min(max_delay, first_delay·2^k): spread out, never longer."""
    sleeps = Sleeps()
    for _ in range(200):
        with pytest.raises(Flaky):
            await attempts(6, retry_on=Flaky, first_delay=0.2, max_delay=2.0, sleep=sleeps)(Failing())
    caps = [0.2, 0.4, 0.8, 1.6, 2.0]
    waits = [sleeps[k::5] for k in range(5)]
    for cap, seen in zip(caps, waits, strict=True):
        assert all(0 <= wait <= cap for wait in seen), (cap, max(seen))
        assert max(seen) > cap / 2, f"the waits under {cap} s are not spread over their range"
        assert len(set(seen)) > 100, "the waits are not random"


async def test_a_failure_not_named_is_not_retried_and_success_ends_the_run() -> None:
    sleeps = Sleeps()
    refused = Failing(error=ValueError)
    with pytest.raises(ValueError, match="attempt 1"):
        await attempts(5, retry_on=Flaky, sleep=sleeps)(refused)
    assert refused.calls == 1
    recovering = Failing(failures=2)
    assert await attempts(5, retry_on=lambda exc: isinstance(exc, Flaky), sleep=sleeps)(recovering) == "done"
    assert recovering.calls == 3
    assert sleeps == [0.0, 0.0], "no delays asked for: the retries are immediate"


async def test_forever_waits_double_up_to_the_cap_without_jitter() -> None:
    sleeps, recovering = Sleeps(), Failing(failures=7)
    assert await forever(retry_on=Flaky, first_delay=0.5, max_delay=10.0, sleep=sleeps)(recovering) == "done"
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_until_gives_up_before_a_wait_would_end_past_the_deadline() -> None:
    deadline, first, cap = 0.3, 0.02, 0.08
    attempt = Failing()
    with pytest.raises(Flaky):
        await until(deadline, retry_on=Flaky, first_delay=first, max_delay=cap)(attempt)
    started = [moment - attempt.started[0] for moment in attempt.started]
    assert all(moment < deadline + 0.05 for moment in started), started  # + a late timer on a busy machine
    next_wait = min(cap, first * 2 ** (attempt.calls - 1))
    assert started[-1] + next_wait >= deadline - 0.01, (started, next_wait)
    assert attempt.calls >= 3, started


async def test_until_retries_without_waiting_past_a_zero_deadline() -> None:
    attempt, sleeps = Failing(), Sleeps()
    with pytest.raises(Flaky):
        await until(0, retry_on=Flaky, first_delay=0.2, max_delay=2.0, sleep=sleeps)(attempt)
    assert (attempt.calls, sleeps) == (1, [])


async def test_the_upstream_503_follows_the_last_attempt_and_counts_each_retry() -> None:
    retried: list[None] = []
    attempt = Failing(error=Retryable)
    with pytest.raises(UpstreamUnavailable, match=r"^Ollama is unavailable: attempt 3$"):
        await call_upstream(
            attempt, retries=2, on_retry=lambda: retried.append(None), unavailable="Ollama is unavailable"
        )
    assert (attempt.calls, len(retried)) == (3, 2)


async def test_a_slow_first_attempt_counts_against_the_deadline() -> None:
    """The first attempt runs outside tenacity (its run costs more CPU than most calls it wraps);
    the deadline still counts from before it: a first attempt that took 0.25 s of a 0.3 s deadline
    leaves no room for a 0.1 s wait, and the wait after it is reported to on_retry as before."""
    calls: list[float] = []
    retried: list[tuple[str, float]] = []

    async def slow_then_failing() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            await asyncio.sleep(0.25)
        raise Flaky(f"attempt {len(calls)}")

    policy = until(
        0.3, retry_on=Flaky, first_delay=0.1, max_delay=0.1, on_retry=lambda f, d: retried.append((str(f), d))
    )
    with pytest.raises(Flaky, match="attempt 1"):
        await policy(slow_then_failing)
    assert (len(calls), retried) == (1, [])
    fast = Failing(failures=2)
    sleeps = Sleeps()
    noted: list[tuple[str, float]] = []
    policy = until(
        5, retry_on=Flaky, first_delay=0.1, max_delay=1, sleep=sleeps, on_retry=lambda f, d: noted.append((str(f), d))
    )
    assert await policy(fast) == "done"
    assert (fast.calls, sleeps, noted) == (3, [0.1, 0.2], [("attempt 1", 0.1), ("attempt 2", 0.2)])
