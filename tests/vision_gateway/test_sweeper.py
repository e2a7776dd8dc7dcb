"""Streams whose gateway died: closed as `interrupted` with the text saved so far; stop is honest.

The first test runs a gateway as a real process, kills it with SIGKILL mid-answer (no graceful
shutdown, no final write) and lets another replica's sweeper find the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import ROOT, auth_headers
from tests.ports import free_port
from tests.vision_gateway.conftest import Stack, ask, read_sse

LONG_REPLY = " ".join(f"word{i}" for i in range(200))


async def wait_until_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert process.poll() is None, "the gateway process exited at start-up"
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the gateway process never became ready")


async def assistant(db: asyncpg.Connection) -> asyncpg.Record:
    return await db.fetchrow("SELECT status, content, error, stream_id FROM messages WHERE role = 'assistant'")


@contextlib.asynccontextmanager
async def gateway_process(stack: Stack, **overrides: str) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """The gateway as a real process (so it can be killed with SIGKILL); yields its URL and process."""
    port = free_port()
    env = {**os.environ, **stack.env, "VISION_GATEWAY_PORT": str(port), "VISION_GATEWAY_HOST": "127.0.0.1"}
    env |= {"PYTHONPATH": str(ROOT), **overrides}
    command = [sys.executable, "-m", "cli.main", "vision-gateway"]
    process = subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: ASYNC220 - returns at once
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_until_healthy(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


@pytest.mark.pgbouncer
async def test_a_killed_gateway_leaves_no_stream_streaming_for_ever(stack: Stack, db: asyncpg.Connection) -> None:
    for model in stack.emulator.models:
        model.reply = LONG_REPLY
    stack.emulator.chunk_delay = 0.05
    async with (
        gateway_process(stack, STREAM_SWEEP_AFTER_SECONDS="3") as (url, process),
        aiohttp.ClientSession() as session,
    ):
        response = await session.post(
            f"{url}/api/stream-message", json={"message": "hi", "model": "llava"}, headers=auth_headers()
        )
        seen = ""
        deadline = time.monotonic() + 20
        while True:  # until some of the answer has been saved as progress
            line = await response.content.readline()
            if line.startswith(b'data: {"type":"chunk"'):
                seen += json.loads(line[6:])["content"]
            row = await assistant(db)
            if row is not None and row["content"]:
                break
            assert time.monotonic() < deadline, "no progress was saved while streaming"
        kill(process)
        response.close()

    killed = await assistant(db)
    assert killed["status"] == "streaming", "nobody closed it: the gateway died"
    saved_text = killed["content"]
    assert seen.startswith(saved_text) or saved_text.startswith(seen[: len(saved_text)])

    survivor = await stack.make_gateway(STREAM_SWEEP_AFTER_SECONDS="3")
    for _ in range(100):
        row = await assistant(db)
        if row["status"] != "streaming":
            break
        await asyncio.sleep(0.1)
    assert row["status"] == "interrupted"
    assert row["content"] == saved_text, "the text saved so far is kept"
    assert "interrupted" in row["error"]

    conversation = await db.fetchval("SELECT conversation_id FROM messages WHERE role = 'assistant'")
    history = await survivor.get(f"/api/conversations/{conversation}/messages", headers=auth_headers())
    messages = (await history.json())["messages"]
    assert [m["status"] for m in messages] == ["complete", "interrupted"]
    stop = await survivor.post(f"/api/stream-message/{row['stream_id']}/stop", headers=auth_headers())
    assert stop.status == 200
    assert await stop.json() == {"stream_id": str(row["stream_id"]), "stopped": False, "status": "interrupted"}
    metrics = await (await survivor.get("/metrics")).text()
    assert "vision_gateway_streams_swept_total 1.0" in metrics


async def test_stop_on_a_stream_no_replica_runs_is_honest(stack: Stack, db: asyncpg.Connection) -> None:
    """Not yet swept (its progress is recent) but no gateway runs it: stop closes it and says so."""
    conversation = await db.fetchval("INSERT INTO conversations (owner_id) VALUES ('alice') RETURNING id")
    stream_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO messages (conversation_id, role, content, status, stream_id, progress_at) "
        "VALUES ($1, 'assistant', 'half of it', 'streaming', $2, now())",
        conversation,
        stream_id,
    )
    started = time.monotonic()
    stop = await stack.gateway.post(f"/api/stream-message/{stream_id}/stop", headers=auth_headers())
    assert stop.status == 200
    assert await stop.json() == {"stream_id": str(stream_id), "stopped": False, "status": "interrupted"}
    assert time.monotonic() - started < 10
    row = await assistant(db)
    assert (row["status"], row["content"]) == ("interrupted", "half of it")
    foreign = await stack.gateway.post(f"/api/stream-message/{stream_id}/stop", headers=auth_headers("bob"))
    assert foreign.status == 404


@pytest.mark.pgbouncer
async def test_a_live_but_silent_stream_is_not_swept(stack: Stack, db: asyncpg.Connection) -> None:
    """A model loading longer than the sweep threshold: the live stream keeps touching its row."""
    stack.emulator.first_token_delay = 3.5
    gateway = await stack.make_gateway(STREAM_SWEEP_AFTER_SECONDS="1.5")
    result: Any = await read_sse(await ask(gateway, {"message": "hi", "model": "llava"}))
    assert result.events[-1]["type"] == "done", result.events[-1]
    assert result.events[-1]["saved"] is True
    row = await assistant(db)
    assert row["status"] == "complete"
    assert result.pings > 0, "the silent stream was kept open with pings"


# Every progress save (an UPDATE that changes the text of a streaming row) takes 0.5 s in the
# database: with a pool of one connection, a replica then saves at most two answers a second.
SLOW_PROGRESS_SAVES = """
CREATE FUNCTION slow_progress_save() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.5);
    RETURN NEW;
END $$;
CREATE TRIGGER slow_progress_save BEFORE UPDATE ON messages FOR EACH ROW
    WHEN (OLD.status = 'streaming' AND NEW.status = 'streaming' AND OLD.content IS DISTINCT FROM NEW.content)
    EXECUTE FUNCTION slow_progress_save();
"""
OVERLOAD_STREAMS = 12
SWEEP_AFTER = 3.0


async def test_an_overloaded_replica_keeps_its_streams_until_it_dies(stack: Stack, db: asyncpg.Connection) -> None:
    """Issue 18 item 3: the owner's liveness, not the last progress save, decides what is swept.

    A replica (a real process) runs 12 streams through a pool of one connection on which every
    progress save takes 0.5 s: each stream then goes ~6 s without a save, twice the sweep
    threshold, while a second replica sweeps every 1.5 s. None is swept while the replica lives;
    once it is killed, all are swept within the threshold and a sweep interval (and some slack).
    """
    for model in stack.emulator.models:
        model.reply = LONG_REPLY
    stack.emulator.chunk_delay = 0.1  # 200 words: 20 s of answer per stream
    await db.execute(SLOW_PROGRESS_SAVES)
    sweeper = await stack.make_gateway(STREAM_SWEEP_AFTER_SECONDS=str(SWEEP_AFTER))
    overloaded = {"STREAM_SWEEP_AFTER_SECONDS": str(SWEEP_AFTER), "DB_POOL_MIN_SIZE": "1", "DB_POOL_MAX_SIZE": "1"}
    async with (
        gateway_process(stack, **overloaded) as (url, process),
        aiohttp.ClientSession() as session,
    ):
        received = [0] * OVERLOAD_STREAMS

        async def read(index: int, response: aiohttp.ClientResponse) -> None:
            with contextlib.suppress(aiohttp.ClientError):
                async for line in response.content:
                    if line.startswith(b'data: {"type":"chunk"'):
                        received[index] += 1

        body = {"message": "hi", "model": "llava"}
        asks = (session.post(f"{url}/api/stream-message", json=body, headers=auth_headers()) for _ in received)
        responses = await asyncio.gather(*asks)
        assert [r.status for r in responses] == [200] * OVERLOAD_STREAMS
        readers = [asyncio.create_task(read(i, r)) for i, r in enumerate(responses)]
        try:
            # While the replica lives: watch the rows for 10 s (more than three sweep thresholds).
            changed: dict[uuid.UUID, tuple[str, float]] = {}
            longest_lag = 0.0
            watch_until = time.monotonic() + 10
            while time.monotonic() < watch_until:
                rows = await db.fetch("SELECT id, status, content FROM messages WHERE role = 'assistant'")
                assert len(rows) == OVERLOAD_STREAMS
                assert {r["status"] for r in rows} == {"streaming"}, "a stream of a live replica was swept"
                now = time.monotonic()
                for row in rows:
                    content, since = changed.get(row["id"], (None, now))
                    if row["content"] != content:
                        changed[row["id"]] = (row["content"], now)
                    else:
                        longest_lag = max(longest_lag, now - since)
                await asyncio.sleep(0.2)
            assert min(received) > 0, "every client was receiving its answer"
            assert longest_lag > SWEEP_AFTER * 1.5, f"progress saves kept up ({longest_lag:.1f} s): proves nothing"
            assert any(content for content, _ in changed.values()), "saves of fewer streams at a time still went in"

            kill(process)
            killed_at = time.monotonic()
            while await db.fetchval("SELECT count(*) FROM messages WHERE status = 'streaming'"):
                assert time.monotonic() - killed_at < 3 * SWEEP_AFTER, "the dead replica's streams were not swept"
                await asyncio.sleep(0.1)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for response in responses:
                response.close()
    statuses = await db.fetch("SELECT status, count(*) FROM messages WHERE role = 'assistant' GROUP BY status")
    assert [tuple(r) for r in statuses] == [("interrupted", OVERLOAD_STREAMS)]
    registry_text = await (await sweeper.get("/metrics")).text()
    assert f"vision_gateway_streams_swept_total {float(OVERLOAD_STREAMS)}" in registry_text
