"""Ollama breaking mid-answer: the stream ends with an error event, the partial answer is kept.

Each test breaks something for real: the emulator process is killed with SIGKILL, the TCP
connection is cut, or Ollama goes silent past OLLAMA_READ_TIMEOUT_SECONDS. The SSE body must stay
well-formed (no second HTTP status line inside the chunked body), and the database row must end
as `error` with exactly the text the client saw.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from typing import Any

import asyncpg
import pytest

from tests.conftest import auth_headers
from tests.plain_errors import assert_plain
from tests.vision_gateway.conftest import Stack, ask, read_events_until, read_sse


async def assistant_row(db: asyncpg.Connection) -> asyncpg.Record:
    return await db.fetchrow("SELECT status, content, error FROM messages WHERE role = 'assistant'")


async def test_ollama_process_killed_mid_answer(
    stack: Stack, db: asyncpg.Connection, emulator_process: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, url = emulator_process
    gateway = await stack.make_gateway(OLLAMA_URL=url, UPSTREAM_RETRIES="0")
    response = await ask(gateway, {"message": "describe it at length", "model": "llava"})
    assert response.status == 200
    seen = await read_events_until(response, chunks=5)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)

    rest = await read_sse(response)  # a malformed chunked body would raise ClientPayloadError here
    events = seen + rest.events
    streamed = "".join(e["content"] for e in events if e["type"] == "chunk")
    final = events[-1]
    assert final["type"] == "error", final
    assert final["code"] == "upstream_error"
    assert "connection to Ollama broke" in final["message"] or "closed the stream" in final["message"]
    assert_plain(final["message"])
    assert (final["partial"], final["saved"]) == (True, True)
    assert [e["type"] for e in events].count("error") == 1

    row = await assistant_row(db)
    assert row["status"] == "error"
    assert row["content"] == streamed, "the partial answer is stored exactly as the client saw it"
    assert streamed.startswith("word0 word1")

    stop = await gateway.post(f"/api/stream-message/{events[0]['stream_id']}/stop", headers=auth_headers())
    assert stop.status == 200
    assert await stop.json() == {"stream_id": events[0]["stream_id"], "stopped": False, "status": "error"}


async def test_connection_cut_mid_answer(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.drop_after_chunks = 4
    result = await read_sse(await ask(stack.gateway, {"message": "hi", "model": "llava"}))
    assert result.status == 200
    [error] = result.of("error")
    assert result.events[-1] is error
    assert (error["code"], error["partial"], error["saved"]) == ("upstream_error", True, True)
    assert_plain(error["message"])
    assert 1 <= len(result.of("chunk")) <= 4, "an abort drops what was still buffered"
    row = await assistant_row(db)
    assert (row["status"], row["content"]) == ("error", result.text)
    assert row["error"] == error["message"]


async def test_ollama_silent_past_the_read_timeout(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.chunk_delay = 3.0  # the first line comes at once, the second after 3 s
    gateway = await stack.make_gateway(OLLAMA_READ_TIMEOUT_SECONDS="1")
    started = asyncio.get_running_loop().time()
    result = await read_sse(await ask(gateway, {"message": "hi", "model": "llava"}))
    elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 2.9, "the read timeout ended the stream, not the next chunk"
    [error] = result.of("error")
    assert error["code"] == "upstream_error"
    assert "read timeout" in error["message"]
    assert_plain(error["message"])
    assert (error["partial"], error["saved"]) == (True, True)
    row = await assistant_row(db)
    assert (row["status"], row["content"]) == ("error", result.text)
    await stack.emulator.wait_for_disconnect(within=5)


async def test_a_line_that_is_not_json_mid_answer(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.mid_stream_error = None
    stack.emulator.fail_after_chunks = 3

    original = stack.emulator._line

    async def garble(response: Any, record: Any, payload: dict[str, Any]) -> None:
        if "error" in payload:
            await response.write(b"<html>502 Bad Gateway</html>\n")
            return
        await original(response, record, payload)

    stack.emulator._line = garble
    result = await read_sse(await ask(stack.gateway, {"message": "hi", "model": "llava"}))
    [error] = result.of("error")
    assert error["code"] == "upstream_error"
    assert "not JSON" in error["message"]
    assert_plain(error["message"])  # not the line Ollama sent: that is in the log
    row = await assistant_row(db)
    assert (row["status"], row["content"]) == ("error", result.text)
    assert len(result.of("chunk")) == 3


async def test_no_http_error_is_written_once_the_stream_started(
    stack: Stack, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug after the SSE headers went out ends the stream cleanly instead of writing a 500 into it."""
    from services.vision_gateway.chat import relay

    def broken_chunk(content: str) -> Any:
        raise RuntimeError("a bug in the relay")

    monkeypatch.setattr(relay.events, "chunk", broken_chunk)
    response = await ask(stack.gateway, {"message": "hi", "model": "llava"})
    result = await read_sse(response)
    assert result.status == 200
    assert b"HTTP/1.1" not in json.dumps(result.events).encode()
    final = result.events[-1]
    assert (final["type"], final["code"], final["saved"]) == ("error", "internal_error", True)
    assert "quote request ID" in final["message"]
    row = await assistant_row(db)
    assert row["status"] == "error", "the failed turn is stored as failed, not left streaming"
