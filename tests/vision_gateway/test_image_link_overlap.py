"""Linking an ask's images to its new user message (`PATCH /api/images/{id}`) runs alongside
Ollama's opening (issue 19): it starts once the turn is recorded, and the first event waits for
it, so its failures are answered as when it ran after the opening.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from services.vision_gateway.image_store_client import ImageStoreClient
from tests.image_store.conftest import photo
from tests.vision_gateway.conftest import Stack, ask, assert_turn_abandoned, read_sse

FORWARDED = ("Authorization", "X-User-Id", "X-Request-ID", "Content-Type")


def slow_patch_proxy(store_url: str, delay: float) -> web.Application:
    """The store behind a proxy that holds each PATCH (the link) for `delay` seconds."""

    async def forward(request: web.Request) -> web.Response:
        if request.method == "PATCH":
            await asyncio.sleep(delay)
        headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, store_url + request.path_qs, headers=headers, data=await request.read()
            ) as answer,
        ):
            body = await answer.read()
            kept = {"Content-Type": answer.headers["Content-Type"]} if "Content-Type" in answer.headers else {}
            return web.Response(status=answer.status, body=body, headers=kept)

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def test_the_link_overlaps_ollamas_first_token(stack: Stack, db: asyncpg.Connection, aiohttp_server: Any) -> None:
    """A link that takes 0.5 s and a first token after 0.5 s: the first token comes after about 0.5 s,
    not 1 s, and the image is still linked to the message before the stream starts."""
    store_url = str(stack.store.make_url("")).rstrip("/")
    proxy = await aiohttp_server(slow_patch_proxy(store_url, 0.5))
    gateway = await stack.make_gateway(IMAGE_STORE_URL=str(proxy.make_url("")).rstrip("/"))
    image_id = await stack.upload(photo("chelsea.png"), content_type="image/png")
    warm = await read_sse(await ask(gateway, {"message": "warm", "model": "llava", "image_ids": [image_id]}))
    assert warm.of("done"), warm.events  # the image is prepared and cached: the ask below makes only the link
    stack.emulator.first_token_delay = 0.5
    started = time.perf_counter()
    response = await ask(gateway, {"message": "What is this?", "model": "llava", "image_ids": [image_id]})
    result = await read_sse(response)
    assert result.of("done"), result.events
    ttft = result.of("done")[0]["stats"]["time_to_first_token_ms"] / 1000
    assert 0.5 <= ttft < 0.9, f"time to first token {ttft:.3f} s: the link did not overlap Ollama's opening"
    assert time.perf_counter() - started >= 0.5
    user_id = result.events[0]["user_message_id"]
    linked = await db.fetchval("SELECT message_id FROM images WHERE id = $1", uuid.UUID(image_id))
    assert str(linked) == user_id


async def test_a_link_failure_after_ollama_started_is_answered_as_before_and_leaves_nothing_open(
    stack: Stack, db: asyncpg.Connection, monkeypatch: Any
) -> None:
    """The link fails (a bug, not a store refusal: those are bookkeeping and ignored) after Ollama's
    request is under way: the client gets the 500 it got when the link ran after the opening, no
    SSE; Ollama's request is closed, the backend's in-flight count is back to 0, the turn is
    recorded as stopped rather than left streaming."""
    image_id = await stack.upload(photo("chelsea.png"), content_type="image/png")
    stack.emulator.first_token_delay = 0.3
    stack.emulator.chunk_delay = 0.05
    for model in stack.emulator.models:
        model.reply = " ".join(f"word{i}" for i in range(400))
    link_called = asyncio.Event()

    async def failing_link(self: ImageStoreClient, *args: Any, **kwargs: Any) -> None:
        link_called.set()
        await asyncio.sleep(0.1)  # Ollama's request is on its way (its first line comes after 0.3 s)
        raise RuntimeError("the link broke")

    monkeypatch.setattr(ImageStoreClient, "link", failing_link)
    response = await ask(stack.gateway, {"message": "What is this?", "model": "llava", "image_ids": [image_id]})
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (500, "internal_error"), body
    assert response.headers["Content-Type"].startswith("application/json")
    assert link_called.is_set()
    assert len(stack.emulator.chats) == 1, "Ollama's request was sent"
    await assert_turn_abandoned(stack, db)
    linked = await db.fetchval("SELECT message_id FROM images WHERE id = $1", uuid.UUID(image_id))
    assert linked is None


async def test_ollama_refusing_early_while_the_link_runs_leaves_no_rows_and_no_link(
    stack: Stack, db: asyncpg.Connection, aiohttp_server: Any
) -> None:
    """Ollama refuses within the grace period while the (slow) link is still running: the link is
    cancelled and waited for before the turn's rows are removed, so no image names a deleted message."""
    store_url = str(stack.store.make_url("")).rstrip("/")
    proxy = await aiohttp_server(slow_patch_proxy(store_url, 0.3))
    gateway = await stack.make_gateway(IMAGE_STORE_URL=str(proxy.make_url("")).rstrip("/"))
    image_id = await stack.upload(photo("chelsea.png"), content_type="image/png")
    stack.emulator.version_profile = "legacy"  # an error line with HTTP 200, once the rows are recorded
    stack.emulator.first_token_delay = 0.1
    stack.emulator.fail_before_first_token = "llama runner process has terminated: signal: killed"
    response = await ask(gateway, {"message": "What is this?", "model": "llava", "image_ids": [image_id]})
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (502, "upstream_error"), body
    await asyncio.sleep(0.5)  # past the proxy's hold: a link that was not stopped would land now
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT message_id FROM images WHERE id = $1", uuid.UUID(image_id)) is None
