"""common.rate_limit.RateLimiter on a fake clock: burst, refill, Retry-After, the bound on keys,
and 0 as "no limit". Through HTTP: tests/image_store/test_upload.py (uploads per owner) and
tests/vision_gateway/test_admission.py (stream requests per user)."""

from __future__ import annotations

import pytest

from common.errors import RateLimited
from common.rate_limit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(per_minute: int, clock: FakeClock, **kwargs: int) -> RateLimiter:
    return RateLimiter(per_minute, refusal="{per_minute} a minute; retry in {retry_after} s", clock=clock, **kwargs)


def refused(rate: RateLimiter, key: str = "alice") -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        rate.take(key)
    return caught.value


# (per minute, requests: (seconds since the previous one, allowed?, Retry-After when refused))
CASES = {
    "burst of per_minute, then refused": (3, [(0, True, 0), (0, True, 0), (0, True, 0), (0, False, 20)]),
    "one token back every 60/per_minute s": (4, [*[(0, True, 0)] * 4, (7.5, False, 8), (7.5, True, 0)]),
    "Retry-After rounds the wait up": (60, [*[(0, True, 0)] * 60, (0.25, False, 1), (0.5, False, 1)]),
    "a refusal takes no token": (2, [(0, True, 0), (0, True, 0), (0, False, 30), (0, False, 30), (30, True, 0)]),
    "refill stops at the burst": (2, [(0, True, 0), (3600, True, 0), (0, True, 0), (0, False, 30)]),
    "slow steady use is never refused": (6, [(10, True, 0)] * 20),
    "0 disables it": (0, [(0, True, 0)] * 1000),
}


@pytest.mark.parametrize(("per_minute", "requests"), CASES.values(), ids=CASES.keys())
def test_token_bucket(per_minute: int, requests: list[tuple[float, bool, int]]) -> None:
    clock = FakeClock()
    rate = limiter(per_minute, clock)
    for step, (elapsed, allowed, retry_after) in enumerate(requests):
        clock.now += elapsed
        if allowed:
            rate.take("alice")
        else:
            error = refused(rate)
            assert (error.status, error.code, error.retry_after) == (429, "rate_limited", retry_after), step
            assert error.message == f"{per_minute} a minute; retry in {retry_after} s"


def test_each_key_has_its_own_bucket() -> None:
    clock = FakeClock()
    rate = limiter(1, clock)
    rate.take("alice")
    refused(rate, "alice")
    rate.take("bob")


def test_the_key_map_is_bounded_and_forgets_the_least_recently_seen() -> None:
    clock = FakeClock()
    rate = limiter(1, clock, max_keys=2)
    rate.take("alice")
    rate.take("bob")
    refused(rate, "alice")  # alice is now the most recently seen
    rate.take("carol")  # past the bound: bob, the least recently seen, is forgotten
    assert len(rate) == 2
    refused(rate, "alice")
    rate.take("bob")  # forgotten: it starts again with a full bucket


def test_a_key_idle_for_a_minute_is_forgotten_with_nothing_lost() -> None:
    clock = FakeClock()
    rate = limiter(2, clock)
    rate.take("alice")
    rate.take("alice")
    clock.now += 59
    assert len(rate) == 1
    clock.now += 1
    assert len(rate) == 0, "its bucket would be full again"
    rate.take("alice")
    rate.take("alice")
    refused(rate)


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="per_minute"):
        limiter(-1, FakeClock())
    with pytest.raises(ValueError, match="max_keys"):
        limiter(1, FakeClock(), max_keys=0)
