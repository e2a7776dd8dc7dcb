"""PostgreSQL really stopped and started under live services.

These tests run on a private PostgreSQL server (tests/postgres.PrivateServer) that they stop with
a fast shutdown, so the suite's shared server is never touched. They prove:
- an answer that ends while the database is down is stored once it is back, within
  STREAM_SAVE_RETRY_SECONDS, and the client is told `saved: true`; if it stays down, `saved: false`,
  and the answer is stored when it returns (within STREAM_SAVE_QUEUE_SECONDS);
- requests that need the database meanwhile answer `503 database_unavailable` with Retry-After on
  both services, and `/readyz` is 503, and everything recovers when it comes back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from common.app import REGISTRY_KEY
from tests.conftest import MIGRATIONS, auth_headers
from tests.postgres import PrivateServer
from tests.vision_gateway.conftest import Stack, ask, read_sse

pytestmark = pytest.mark.slow

LONG_REPLY = " ".join(f"word{i}" for i in range(40))


@pytest.fixture(scope="module")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    server = PrivateServer(tmp_path_factory.mktemp("private-pg") / "data", MIGRATIONS)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def database_url(private_postgres: PrivateServer) -> Iterator[str]:
    """Overrides the suite's fixture: this module's databases live on the private server."""
    url = private_postgres.factory.create()
    yield url
    private_postgres.start()
    private_postgres.factory.drop(url)


async def stop_postgres(server: PrivateServer) -> None:
    await asyncio.to_thread(server.stop)


async def start_postgres(server: PrivateServer) -> None:
    await asyncio.to_thread(server.start)


async def first_event(response: aiohttp.ClientResponse) -> dict[str, Any]:
    line = await response.content.readline()
    assert line.startswith(b"data: "), line
    assert await response.content.readline() == b"\n"
    return json.loads(line[len(b"data: ") :])


async def until(predicate: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def answer_row(database_url: str) -> asyncpg.Record:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow("SELECT status, content FROM messages WHERE role = 'assistant'")
    finally:
        await conn.close()


def lost_answers(client: TestClient) -> float:
    return answer_saves(client, "lost")


async def test_answer_is_saved_when_the_database_returns_in_time(
    stack: Stack, private_postgres: PrivateServer, database_url: str
) -> None:
    for model in stack.emulator.models:
        model.reply = LONG_REPLY
    stack.emulator.chunk_delay = 0.05
    gateway = await stack.make_gateway(STREAM_SAVE_RETRY_SECONDS="60")
    stack.emulator.first_token_delay = 0.0
    response = await ask(gateway, {"message": "hi", "model": "llava"})
    start = await first_event(response)
    stack.emulator.chunk_delay = 0.3  # slow while the database stops (more than 10 s of answer left)...
    await stop_postgres(private_postgres)
    assert not await _completed(stack), "the answer ended before the database was down: proves nothing"
    stack.emulator.chunk_delay = 0.0  # ...then the rest of the answer arrives while it is down
    await until(lambda: _completed(stack), within=30)
    await asyncio.sleep(0.5)  # the gateway is now retrying the final write
    await start_postgres(private_postgres)

    result = await read_sse(response)
    done = result.events[-1]
    assert (done["type"], done["done_reason"], done["saved"]) == ("done", "stop", True)
    assert done["message_id"] == start["message_id"]
    row = await answer_row(database_url)
    assert row["status"] == "complete"
    assert row["content"] == LONG_REPLY
    assert lost_answers(gateway) == 0


async def _completed(stack: Stack) -> bool:
    return bool(stack.emulator.chats) and stack.emulator.chats[-1].completed


def answer_saves(client: TestClient, result: str) -> float:
    registry = client.server.app[REGISTRY_KEY]
    return registry.get_sample_value("vision_gateway_answer_saves_total", {"result": result}) or 0.0


def swept(client: TestClient) -> float:
    return client.server.app[REGISTRY_KEY].get_sample_value("vision_gateway_streams_swept_total") or 0.0


async def end_while_down(stack: Stack, private_postgres: PrivateServer, gateway: TestClient) -> dict[str, Any]:
    """Stop PostgreSQL near the end of an answer, let the answer end while it is down; the final event."""
    for model in stack.emulator.models:
        model.reply = LONG_REPLY
    stack.emulator.chunk_delay = 0.1
    response = await ask(gateway, {"message": "hi", "model": "llava"})
    await first_event(response)
    await stop_postgres(private_postgres)
    assert not await _completed(stack), "the answer ended before the database was down: proves nothing"
    stack.emulator.chunk_delay = 0.0  # the rest of the answer arrives while it is down
    result = await read_sse(response)
    assert result.text == LONG_REPLY, "the client read the whole answer"
    return result.events[-1]


async def test_an_answer_the_retries_missed_is_stored_when_the_database_returns(
    stack: Stack, private_postgres: PrivateServer, database_url: str
) -> None:
    """Issue 18 item 4: down for longer than STREAM_SAVE_RETRY_SECONDS (and than the sweep
    threshold) when the answer ends: the client is told `saved: false`, which was true then; the
    final is kept in memory and written when PostgreSQL returns, and no sweeper overwrites it."""
    gateway = await stack.make_gateway(STREAM_SAVE_RETRY_SECONDS="1", STREAM_SWEEP_AFTER_SECONDS="2")
    other_replica = await stack.make_gateway(STREAM_SWEEP_AFTER_SECONDS="2")  # sweeps every second
    done = await end_while_down(stack, private_postgres, gateway)
    assert (done["type"], done["saved"]) == ("done", False), "never a silent loss"
    assert answer_saves(gateway, "queued") == 1
    await asyncio.sleep(3)  # still down: past the retry window and the sweep threshold
    await start_postgres(private_postgres)

    async def stored() -> bool:
        return (await answer_row(database_url))["status"] != "streaming"

    await until(stored, within=30)
    row = await answer_row(database_url)
    assert (row["status"], row["content"]) == ("complete", LONG_REPLY), "what the user read is stored"
    await asyncio.sleep(3)  # a sweep that came after the write would show now
    assert (await answer_row(database_url))["status"] == "complete"
    assert (answer_saves(gateway, "saved_late"), answer_saves(gateway, "lost")) == (1, 0)
    assert swept(gateway) + swept(other_replica) == 0


async def test_an_answer_kept_past_the_queue_time_is_lost_and_its_row_swept(
    stack: Stack, private_postgres: PrivateServer, database_url: str
) -> None:
    """Down for longer than STREAM_SAVE_QUEUE_SECONDS as well: the final is given up (counted as
    lost), and the row, no longer held by its replica, is closed by the sweeper with its last
    progress save: nothing stays `streaming` for ever."""
    gateway = await stack.make_gateway(
        STREAM_SAVE_RETRY_SECONDS="0.5", STREAM_SAVE_QUEUE_SECONDS="1", STREAM_SWEEP_AFTER_SECONDS="2"
    )
    done = await end_while_down(stack, private_postgres, gateway)
    assert (done["type"], done["saved"]) == ("done", False)

    async def given_up() -> bool:
        return answer_saves(gateway, "lost") == 1

    await until(given_up, within=10)
    await start_postgres(private_postgres)

    async def swept_row() -> bool:
        return (await answer_row(database_url))["status"] != "streaming"

    await until(swept_row, within=15)
    row = await answer_row(database_url)
    assert row["status"] == "interrupted"
    assert LONG_REPLY.startswith(row["content"]), "the last progress save is kept"
    assert answer_saves(gateway, "saved_late") == 0


async def test_requests_during_an_outage_are_503_database_unavailable(
    stack: Stack, private_postgres: PrivateServer
) -> None:
    image_id = await stack.upload(_png())
    conversation = await read_sse(await ask(stack.gateway, {"message": "hi", "model": "llava"}))
    conversation_id = conversation.events[0]["conversation_id"]
    async with aiohttp.ClientSession() as session:
        store_url = str(stack.store.make_url(f"/api/images/{image_id}/meta"))
        await stop_postgres(private_postgres)

        async with session.get(store_url, headers=auth_headers()) as store_answer:
            body = await store_answer.json()
            assert store_answer.status == 503, body
            assert body["error"]["code"] == "database_unavailable"
            assert int(store_answer.headers["Retry-After"]) >= 1
        history = await stack.gateway.get(f"/api/conversations/{conversation_id}/messages", headers=auth_headers())
        assert history.status == 503
        assert (await history.json())["error"]["code"] == "database_unavailable"
        assert int(history.headers["Retry-After"]) >= 1
        followup = await ask(stack.gateway, {"message": "again", "model": "llava", "conversation_id": conversation_id})
        assert followup.status == 503
        assert (await followup.json())["error"]["code"] == "database_unavailable"
        assert (await stack.gateway.get("/readyz")).status == 503
        async with session.get(str(stack.store.make_url("/readyz"))) as ready:
            assert ready.status == 503

        await start_postgres(private_postgres)

        async def store_recovered() -> bool:
            async with session.get(store_url, headers=auth_headers()) as again:
                return again.status == 200

        async def gateway_recovered() -> bool:
            again = await stack.gateway.get(f"/api/conversations/{conversation_id}/messages", headers=auth_headers())
            return again.status == 200

        await until(store_recovered)
        await until(gateway_recovered)
    registry = stack.gateway.server.app[REGISTRY_KEY]
    route = "/api/conversations/{conversation_id}/messages"
    assert (
        registry.get_sample_value("http_server_requests_total", {"method": "GET", "route": route, "code": "503"}) == 1
    )
    assert not registry.get_sample_value("http_server_requests_total", {"method": "GET", "route": route, "code": "500"})


def _png() -> bytes:
    from tests.image_store.conftest import png

    return png()
