"""Streams whose gateway died: closed as `interrupted` with the text saved so far; stop is honest.

The first test runs a gateway as a real process, kills it with SIGKILL mid-answer (no graceful
shutdown, no final write) and lets another replica's sweeper find the row.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
import asyncpg

from tests.conftest import ROOT, auth_headers
from tests.vision_gateway.conftest import Stack, ask, read_sse
from tests.vision_gateway.test_stream_failures import free_port

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


async def test_a_killed_gateway_leaves_no_stream_streaming_for_ever(stack: Stack, db: asyncpg.Connection) -> None:
    for model in stack.emulator.models:
        model.reply = LONG_REPLY
    stack.emulator.chunk_delay = 0.05
    port = free_port()
    env = {**os.environ, **stack.env, "VISION_GATEWAY_PORT": str(port), "VISION_GATEWAY_HOST": "127.0.0.1"}
    env |= {"STREAM_SWEEP_AFTER_SECONDS": "3", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "cli.main", "vision-gateway"]
    process = subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: ASYNC220 - returns at once
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_until_healthy(url, process)
        async with aiohttp.ClientSession() as session:
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
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            response.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

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
