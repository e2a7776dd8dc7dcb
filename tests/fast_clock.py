"""An event loop whose clock runs `speed` times faster than the wall clock, for tests of long waits.

Everything that waits on the loop's clock fires after 1/speed of the real time: asyncio.sleep,
asyncio.timeout, call_later, aiohttp's client timeouts and the services' body clocks (all of them
read loop.time()). Work outside the loop (threads, other processes, sockets) keeps real time, so
it looks `speed` times slower to the code under test: keep `speed` such that the shortest clock
involved still leaves it a second or more of real time.
"""

from __future__ import annotations

import asyncio
import selectors
import time


class _ScaledSelector(selectors.DefaultSelector):
    """Waits for I/O 1/speed as long as asked: the loop computes its waits on its fast clock."""

    def __init__(self, speed: float) -> None:
        super().__init__()
        self._speed = speed

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return super().select(None if timeout is None else timeout / self._speed)


class FastClockLoop(asyncio.SelectorEventLoop):
    def __init__(self, speed: float) -> None:
        super().__init__(_ScaledSelector(speed))
        self.speed = speed
        self._origin = time.monotonic()

    def time(self) -> float:
        return self._origin + (time.monotonic() - self._origin) * self.speed
