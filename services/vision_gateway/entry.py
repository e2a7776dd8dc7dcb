"""What every ask entry (JSON, multipart, /v1) shares at the HTTP edge: body clocks and the stream.

An entry reads its body under `body_clocks` (IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS and
IMAGE_UPLOAD_DEADLINE_SECONDS: a stalled client gets 408 whichever part it stalls in), admits the
ask through `ChatService.admit`, and streams the begun turn with `stream_turn`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

from aiohttp import web

from common.errors import RequestTimeout
from common.http.body_timeout import BodyClocks, BodyReadTimeout, read_limits
from common.metrics import EVENT_STREAM_KEY
from services.vision_gateway.chat import ChatService, OpenTurn
from services.vision_gateway.chat.relay import EventSink
from services.vision_gateway.sse import HEARTBEAT_KEY, EventStream

# How long to wait for Ollama before committing to a stream (and pinging while it loads).
OPEN_GRACE_SECONDS = 1.0


@contextlib.asynccontextmanager
async def body_clocks(request: web.Request, service: ChatService) -> AsyncIterator[BodyClocks]:
    """Read a body under the idle and overall clocks; a client that breaks them gets 408."""
    settings = service.settings
    try:
        async with read_limits(
            lambda: request.content.total_bytes,
            idle_seconds=settings.upload_idle_timeout_seconds,
            deadline_seconds=settings.upload_deadline_seconds,
        ) as clocks:
            yield clocks
    except BodyReadTimeout as exc:
        raise RequestTimeout(exc.message) from exc


async def stream_turn(
    request: web.Request,
    service: ChatService,
    turn: OpenTurn,
    *,
    headers: Mapping[str, str],
    sink: Callable[[EventStream], EventSink] = lambda stream: stream,
) -> web.StreamResponse:
    """Relay a begun turn as Server-Sent Events; a client gone before the first byte stops the turn."""
    request[EVENT_STREAM_KEY] = True
    stream = EventStream(heartbeat=request.config_dict[HEARTBEAT_KEY], headers=headers)
    try:
        await stream.prepare(request)
    except BaseException:  # the client left before the stream began; the turn must not stay "streaming"
        await service.abandon(turn)
        raise
    try:
        await service.relay(turn, sink(stream))
    finally:
        await stream.close()
    return stream.response
