"""The whole stack with DATABASE_URL through a real PgBouncer in pool_mode=transaction.

What failed before DATABASE_POOLER=transaction existed (issue 24): readiness answered 503
(`prepared statement "__asyncpg_stmt_4__" already exists`), every stream 500, uploads worked only
when the pooler happened to hand back the same server connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from common import pg_listen
from tests.conftest import auth_headers
from tests.image_store.conftest import png
from tests.vision_gateway.conftest import Stack, ask, read_sse

pytestmark = [pytest.mark.postgres_paths, pytest.mark.parametrize("database_route", ["pgbouncer"], indirect=True)]


async def store_get(stack: Stack, path: str) -> tuple[int, str, bytes]:
    """GET on the stack's image-store as alice: (status, content type, body)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(str(stack.store.make_url(path)), headers=auth_headers()) as response,
    ):
        return response.status, response.headers.get("Content-Type", ""), await response.read()


async def test_readiness_and_streams_through_the_pooler(stack: Stack, db: asyncpg.Connection) -> None:
    assert stack.env["DATABASE_POOLER"] == "transaction"
    assert stack.env["DATABASE_URL"] != stack.env["DATABASE_DIRECT_URL"]
    for _ in range(5):  # several borrows: each may land on another server connection
        ready = await stack.gateway.get("/readyz")
        assert ready.status == 200, await ready.text()
        status, _, body = await store_get(stack, "/readyz")
        assert status == 200, body
    results = await asyncio.gather(*(ask(stack.gateway, {"message": f"hi {n}", "model": "llava"}) for n in range(6)))
    for response in results:
        sse = await read_sse(response)
        assert sse.status == 200
        assert sse.events[-1]["type"] == "done", sse.events[-1]
    statuses = await db.fetch("SELECT status FROM messages WHERE role = 'assistant'")
    assert [r["status"] for r in statuses] == ["complete"] * 6


async def test_uploads_reads_and_asks_about_stored_images(stack: Stack) -> None:
    ids = [await stack.upload(png(32 + n, 24), content_type="image/png") for n in range(5)]
    for image_id in ids:
        for _ in range(2):
            status, content_type, _ = await store_get(stack, f"/api/images/{image_id}")
            assert (status, content_type) == (200, "image/png")
    response = await ask(stack.gateway, {"message": "what is it?", "model": "llava", "image_ids": ids[:2]})
    sse = await read_sse(response)
    assert sse.status == 200
    assert sse.events[-1]["type"] == "done", sse.events


async def listener_down(client: Any) -> bool:
    response = await client.get("/readyz")
    body = await response.json()
    return response.status == 503 and body["checks"]["stop_listener"].startswith("failed")


async def test_a_stop_sent_while_the_listener_was_down_is_made_up_for(
    stack: Stack, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct connection is cut: it comes back, and the stop it missed still ends the stream."""
    monkeypatch.setattr(pg_listen, "FIRST_DELAY_SECONDS", 1.5)  # the stop lands while it is down
    for model in stack.emulator.models:
        model.reply = " ".join(f"word{i}" for i in range(400))
    stack.emulator.chunk_delay = 0.1  # 40 s of answer
    other_replica = await stack.make_gateway()
    started = time.monotonic()
    response = await ask(stack.gateway, {"message": "hi", "model": "llava"})
    start = json.loads((await response.content.readline())[len(b"data: ") :])
    assert await response.content.readline() == b"\n"
    cut = await db.fetch(
        """
        SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%retina_stream_stop%'
        """
    )
    assert len(cut) == 2, "each replica's LISTEN is a direct connection of its own"
    deadline = time.monotonic() + 5
    while not await listener_down(stack.gateway):
        assert time.monotonic() < deadline, "the lost listener was not noticed"
        await asyncio.sleep(0.05)
    stop = await other_replica.post(f"/api/stream-message/{start['stream_id']}/stop", headers=auth_headers())
    assert stop.status == 200
    assert await stop.json() == {"stream_id": start["stream_id"], "stopped": False, "status": "interrupted"}
    rest = await read_sse(response)
    assert rest.events[-1]["type"] == "done"
    assert rest.events[-1]["done_reason"] == "stopped"
    assert time.monotonic() - started < 15, "stopped long before the answer's 40 s"
    ready = await stack.gateway.get("/readyz")
    assert ready.status == 200, "the listener is back"
    row = await db.fetchrow("SELECT status, content FROM messages WHERE role = 'assistant'")
    assert row["status"] == "stopped"
    assert row["content"] == rest.text
