"""The replica's heartbeat pings silent streams a slice at a time, letting the event loop run between slices."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.vision_gateway import sse
from services.vision_gateway.sse import EventStream, Heartbeat


class Recorder:
    """Stands in for a stream's response: what was written, by which stream."""

    def __init__(self, name: int, written: list[tuple[int, bytes]]) -> None:
        self.name = name
        self.written = written

    async def write(self, data: bytes) -> None:
        self.written.append((self.name, data))


def silent_stream(heartbeat: Heartbeat, name: int, written: list[tuple[int, bytes]]) -> EventStream:
    stream = EventStream(heartbeat=heartbeat)
    stream.response = Recorder(name, written)  # type: ignore[assignment]
    stream.last_write = time.monotonic() - 2 * heartbeat.seconds
    heartbeat.add(stream)
    return stream


async def test_due_streams_are_pinged_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "PING_SLICE", 2)
    heartbeat = Heartbeat(15.0)
    written: list[tuple[int, bytes]] = []
    streams = [silent_stream(heartbeat, name, written) for name in range(5)]
    fresh, *_, last = list(heartbeat._streams)  # the order the heartbeat goes through them
    fresh.last_write = time.monotonic()  # written to just now: not due
    asyncio.get_running_loop().call_soon(heartbeat.discard, last)  # ends during the first slice's pings

    await heartbeat.ping_due()
    await asyncio.sleep(0)  # the last slice's pings go out

    expected = sorted(streams.index(s) for s in streams if s not in (fresh, last))
    pinged = sorted(name for name, _ in written)
    assert pinged == expected, "every stream due is pinged once; the one that ended between slices is not"
    assert {data for _, data in written} == {b": ping\n\n"}
