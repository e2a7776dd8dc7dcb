from __future__ import annotations

import asyncio

from common.slices import in_slices


async def test_every_item_comes_once_in_order_and_the_loop_runs_between_slices() -> None:
    seen: list[int] = []
    ran_between: list[int] = []

    async def other_work() -> None:
        while True:
            ran_between.append(len(seen))
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)  # it has started and waits for the loop's next step
    ran_between.clear()
    try:
        async for part in in_slices(list(range(10)), 4):
            seen.extend(part)
    finally:
        other.cancel()
    assert seen == list(range(10))
    # Between slices (after 4 and after 8 items) the other task got the loop; never within a slice.
    assert 4 in ran_between
    assert 8 in ran_between
    assert all(n % 4 == 0 for n in ran_between)


async def test_no_items_no_slices() -> None:
    assert [part async for part in in_slices([], 3)] == []
