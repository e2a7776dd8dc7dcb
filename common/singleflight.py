"""Single-flight: concurrent calls for the same key share one execution and its result.

Forty requests for one image must not download and decode it forty times, and a burst of
requests for an unknown model must not ask Ollama forty times. The shared work runs in its own
task, so one caller giving up (a client disconnecting) neither cancels it for the others nor
leaves them with a CancelledError; the result (or the exception) reaches every waiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        """Keys with work running now (for tests and metrics)."""
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        """Whether work for `key` is running now (so joining it costs nothing)."""
        return key in self._flights

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """`work()`'s result; if a call with `key` is already running, that call's result instead."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(work())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(flight)

    def _landed(self, key: K, flight: asyncio.Task[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here: when every caller has left, nobody else will
