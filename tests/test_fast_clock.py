"""The fast clock (tests/fast_clock.py) that lets a test of a minute-long upload take seconds."""

from __future__ import annotations

import asyncio
import time

from tests.fast_clock import FastClockLoop


def test_waits_on_the_loop_clock_take_a_fraction_of_real_time() -> None:
    async def scenario() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(5)
        slept = loop.time() - started
        timed_out = False
        try:
            async with asyncio.timeout(3):
                await asyncio.Event().wait()
        except TimeoutError:
            timed_out = True
        return slept, loop.time() - started, timed_out

    real_start = time.monotonic()
    with asyncio.Runner(loop_factory=lambda: FastClockLoop(20)) as runner:
        slept, total, timed_out = runner.run(scenario())
    real = time.monotonic() - real_start
    assert 5 <= slept < 6.5, slept
    assert timed_out
    assert 8 <= total < 10, total
    assert real < 2, f"8 s on the loop's clock took {real:.2f} s of real time"
