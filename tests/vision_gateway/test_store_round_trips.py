"""How many requests an ask makes of the image-store, counted by a proxy in front of it (issue 17 item 4).

Each store request costs more CPU than relaying a whole answer. Per image per ask: at most 3 for
a multipart ask (upload, bytes, link), 2 for the first JSON ask about an image (the bytes GET is
the access check; the link), 1 for a later ask about an image the gateway has prepared (the link).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import auth_headers
from tests.image_store.conftest import photo
from tests.vision_gateway.conftest import Stack, ask, read_sse

FORWARDED = ("Authorization", "X-User-Id", "X-Request-ID", "Content-Type", "If-None-Match")
RETURNED = ("Content-Type", "ETag", "Retry-After", "Cache-Control")


class CountingProxy:
    """Forwards every request to the store and counts them as "METHOD kind" (upload, bytes, meta, link...)."""

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self.seen: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def _forward(self, request: web.Request) -> web.Response:
        self.seen[f"{request.method} {_kind(request.path)}"] += 1
        headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.store_url + request.path_qs, headers=headers, data=await request.read()
            ) as answer,
        ):
            body = await answer.read()
            kept = {name: answer.headers[name] for name in RETURNED if name in answer.headers}
            return web.Response(status=answer.status, body=body, headers=kept)

    def total(self) -> int:
        return sum(self.seen.values())


def _kind(path: str) -> str:
    parts = path.strip("/").split("/")  # api, images, {id}, meta
    if len(parts) == 2:
        return "upload-or-list"
    return "meta" if parts[-1] == "meta" else "image"


@pytest.fixture
async def counted(stack: Stack, aiohttp_server: Any) -> tuple[CountingProxy, TestClient]:
    proxy = CountingProxy(str(stack.store.make_url("")).rstrip("/"))
    server = await aiohttp_server(proxy.app())
    gateway = await stack.make_gateway(IMAGE_STORE_URL=str(server.make_url("")).rstrip("/"))
    return proxy, gateway


async def test_a_multipart_ask_with_one_image_makes_three_store_requests(
    counted: tuple[CountingProxy, TestClient], db: asyncpg.Connection
) -> None:
    proxy, gateway = counted
    form = aiohttp.FormData()
    form.add_field("message", "What is this?")
    form.add_field("model", "llava")
    form.add_field("images", photo("chelsea.png"), filename="cat.png", content_type="image/png")
    result = await read_sse(await gateway.post("/api/stream-message", data=form, headers=auth_headers()))
    assert result.of("done"), result.events
    assert proxy.seen == Counter({"POST upload-or-list": 1, "GET image": 1, "PATCH image": 1}), proxy.seen
    assert await db.fetchval("SELECT count(*) FROM images WHERE message_id IS NOT NULL") == 1


async def test_json_asks_make_two_store_requests_then_one(
    stack: Stack, counted: tuple[CountingProxy, TestClient], db: asyncpg.Connection
) -> None:
    proxy, gateway = counted
    image_id = await stack.upload(photo("chelsea.png"), content_type="image/png")  # straight to the store
    first = await read_sse(await ask(gateway, {"message": "What is this?", "model": "llava", "image_ids": [image_id]}))
    assert first.of("done"), first.events
    assert proxy.seen == Counter({"GET image": 1, "PATCH image": 1}), proxy.seen
    proxy.seen.clear()
    later = await read_sse(await ask(gateway, {"message": "And now?", "model": "llava", "image_ids": [image_id]}))
    assert later.of("done"), later.events
    assert proxy.seen == Counter({"PATCH image": 1}), proxy.seen
    assert len(stack.emulator.chats[-1].images) == 1, "the later ask still sends the image"


async def test_someone_elses_image_is_refused_by_the_one_request_that_fetches_it(
    stack: Stack, counted: tuple[CountingProxy, TestClient], db: asyncpg.Connection
) -> None:
    proxy, gateway = counted
    image_id = await stack.upload(photo("chelsea.png"), user="bob", content_type="image/png")
    # alice's ask about bob's image, after bob's own ask put it in the gateway's caches
    assert (await read_sse(await ask(gateway, {"message": "hi", "model": "llava", "image_ids": [image_id]}, "bob"))).of(
        "done"
    )
    proxy.seen.clear()
    response = await ask(gateway, {"message": "hi", "model": "llava", "image_ids": [image_id]}, "alice")
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (404, "image_not_found"), body
    assert proxy.seen == Counter({"GET image": 1}), proxy.seen
    assert await db.fetchval("SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                             "WHERE c.owner_id = 'alice'") == 0  # fmt: skip
