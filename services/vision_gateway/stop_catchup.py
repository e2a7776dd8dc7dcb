"""Stops this replica missed while its LISTEN connection was down, made up for when it is back.

A stop is a NOTIFY, and a notification sent while the listener is disconnected is lost. The row
is not: a replica asked to stop a stream that no replica confirms within STOP_CONFIRM_SECONDS
closes the row itself (`interrupted`). So on every (re)connect the listener's owner asks which of
its live streams' rows no longer say `streaming`, and stops those locally; once at once, and once
more after the stopper's wait, for a stop sent just before the reconnect. Streams already stopping
(stopped by the first pass and still writing their final answer, or by their owner) are left out:
each caught-up stop is stopped and logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from typing import Any

import structlog

from common.background import in_background
from services.vision_gateway.chat.service import STOP_CONFIRM_SECONDS
from services.vision_gateway.streams import StreamRegistry

log = structlog.get_logger("retina.vision_gateway.stop_catchup")

RECHECK_AFTER_SECONDS = STOP_CONFIRM_SECONDS + 1.0

EndedStreams = Callable[[Collection[uuid.UUID]], Coroutine[Any, Any, list[uuid.UUID]]]


class StopCatchUp:
    def __init__(
        self, registry: StreamRegistry, ended_streams: EndedStreams, *, recheck_after: float = RECHECK_AFTER_SECONDS
    ) -> None:
        self._registry = registry
        self._ended_streams = ended_streams
        self._recheck_after = recheck_after
        self._connected = asyncio.Event()

    def on_listener_state(self, listening: bool) -> None:
        """`common.pg_listen` state callback: a (re)connect starts a catch-up."""
        if listening:
            self._connected.set()

    async def catch_up(self) -> int:
        """Stop the live streams whose rows were closed elsewhere; returns how many were stopped."""
        live = self._registry.running_ids()
        if not live:
            return 0
        try:
            ended = await self._ended_streams(live)
        except Exception as exc:  # noqa: BLE001 - the next reconnect (or the sweeper) tries again
            log.warning("stop_catch_up_failed", error=repr(exc))
            return 0
        stopped = [stream_id for stream_id in ended if self._registry.stop_running(stream_id)]
        for stream_id in stopped:
            log.info("missed_stop_caught_up", stream_id=str(stream_id))
        return len(stopped)

    async def _run(self) -> None:
        while True:
            await self._connected.wait()
            self._connected.clear()
            await self.catch_up()
            await asyncio.sleep(self._recheck_after)
            await self.catch_up()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with in_background(self._run(), name="stop-catch-up"):
            yield
