"""SingleFlight: one execution per key for concurrent callers, whatever happens to any one of them."""

from __future__ import annotations

import asyncio

import pytest

from common.singleflight import SingleFlight


async def test_concurrent_callers_share_one_execution_and_later_ones_start_anew() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        mine = calls
        await release.wait()
        return mine

    waiters = [asyncio.create_task(flights.run("a", work)) for _ in range(10)]
    other = asyncio.create_task(flights.run("b", work))
    await asyncio.sleep(0.01)
    assert len(flights) == 2
    release.set()
    shared = [await w for w in waiters]
    assert len(set(shared)) == 1, "every caller got the one execution's result"
    assert {shared[0], await other} == {1, 2}
    assert calls == 2, "one execution per key"
    assert len(flights) == 0
    assert await flights.run("a", work) == 3, "a finished flight is not a cache"


async def test_the_first_caller_leaving_does_not_cancel_the_work_for_the_others() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "prepared"

    leader = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0.01)
    leader.cancel()
    await asyncio.sleep(0.01)
    release.set()
    assert await follower == "prepared"
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_a_failure_reaches_every_caller() -> None:
    flights: SingleFlight[str, str] = SingleFlight()

    async def work() -> str:
        await asyncio.sleep(0.01)
        raise LookupError("gone")

    results = await asyncio.gather(*(flights.run("k", work) for _ in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [LookupError] * 3
    assert len(flights) == 0
