"""Thinking models end to end: the `think` field, `thinking` events, the stored thinking and its history.

The emulator thinks as Ollama >= 0.12.4 does: a thinking-capable model (qwen3 in its catalogue)
thinks when `think` is unset or truthy, and streams `message.thinking` lines before the answer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import asyncpg
import pytest

from cli.ollama_emulator import OllamaEmulator
from tests.conftest import auth_headers
from tests.vision_gateway.conftest import SseResult, Stack, ask, read_sse
from tests.vision_gateway.test_faults import expect_refusal

QWEN = OllamaEmulator().find("qwen3")
ASSISTANT_ROW = "SELECT status, content, thinking, error FROM messages WHERE role = 'assistant'"


def thoughts(result: SseResult) -> str:
    return "".join(e["content"] for e in result.of("thinking"))


async def history(stack: Stack, conversation_id: str) -> list[dict[str, Any]]:
    response = await stack.gateway.get(f"/api/conversations/{conversation_id}/messages", headers=auth_headers())
    assert response.status == 200
    messages: list[dict[str, Any]] = (await response.json())["messages"]
    return messages


async def test_thinking_streams_before_the_answer_and_is_stored_apart(stack: Stack, db: asyncpg.Connection) -> None:
    result = await read_sse(await ask(stack.gateway, {"message": "What is 2+2?", "model": "qwen3", "think": True}))
    assert result.status == 200
    kinds = [e["type"] for e in result.events]
    assert kinds[0] == "start"
    assert kinds[-1] == "done"
    first_chunk = kinds.index("chunk")
    assert set(kinds[1:first_chunk]) == {"thinking"}, "all thinking comes before the first chunk"
    assert "thinking" not in kinds[first_chunk:]
    assert all(e["content"] for e in result.of("thinking")), "no empty thinking events"
    assert thoughts(result) == QWEN.thinking_reply
    assert result.text == QWEN.reply
    assert stack.emulator.chats[-1].body["think"] is True
    row = await db.fetchrow(ASSISTANT_ROW)
    assert (row["status"], row["content"], row["thinking"]) == ("complete", QWEN.reply, QWEN.thinking_reply)
    messages = await history(stack, result.events[0]["conversation_id"])
    assert [(m["role"], m["content"], m["thinking"]) for m in messages] == [
        ("user", "What is 2+2?", None),
        ("assistant", QWEN.reply, QWEN.thinking_reply),
    ]
    # The next turn's prompt carries the earlier answer, never its thinking.
    follow_up = {"message": "And 3+3?", "model": "qwen3", "conversation_id": result.events[0]["conversation_id"]}
    assert (await read_sse(await ask(stack.gateway, follow_up))).status == 200
    sent = stack.emulator.chats[-1].body["messages"]
    assert sent[1] == {"role": "assistant", "content": QWEN.reply}


async def test_unset_think_leaves_ollamas_default_and_relays_what_arrives(stack: Stack, db: asyncpg.Connection) -> None:
    result = await read_sse(await ask(stack.gateway, {"message": "What is 2+2?", "model": "qwen3"}))
    assert "think" not in stack.emulator.chats[-1].body, "unset is not sent: Ollama's default applies"
    assert thoughts(result) == QWEN.thinking_reply, "a modern Ollama thinks by default; the thinking is relayed"
    assert await db.fetchval("SELECT thinking FROM messages WHERE role = 'assistant'") == QWEN.thinking_reply


async def test_think_false_turns_thinking_off(stack: Stack, db: asyncpg.Connection) -> None:
    result = await read_sse(await ask(stack.gateway, {"message": "What is 2+2?", "model": "qwen3", "think": False}))
    assert stack.emulator.chats[-1].body["think"] is False
    assert result.of("thinking") == []
    assert result.text == QWEN.reply
    assert await db.fetchval("SELECT thinking FROM messages WHERE role = 'assistant'") is None
    [_, answer] = await history(stack, result.events[0]["conversation_id"])
    assert answer["thinking"] is None


@pytest.mark.parametrize("level", ["low", "medium", "high", "max"])
async def test_think_levels_reach_ollama(stack: Stack, level: str) -> None:
    result = await read_sse(await ask(stack.gateway, {"message": "hi", "model": "qwen3", "think": level}))
    assert result.events[-1]["type"] == "done"
    assert stack.emulator.chats[-1].body["think"] == level
    assert thoughts(result) == QWEN.thinking_reply


@pytest.mark.parametrize(("text", "sent"), [("true", True), ("false", False), ("high", "high")])
async def test_think_as_a_form_field(stack: Stack, text: str, sent: bool | str) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("message", "What is 2+2?")
    form.add_field("model", "qwen3")
    form.add_field("think", text)
    result = await read_sse(await stack.gateway.post("/api/stream-message", data=form, headers=auth_headers()))
    assert result.status == 200, result.events
    assert stack.emulator.chats[-1].body["think"] == sent
    assert bool(result.of("thinking")) is (sent is not False)


@pytest.mark.parametrize("think", [True, "low", "max"])
async def test_a_model_that_cannot_think_is_refused_before_anything_is_written(
    stack: Stack, db: asyncpg.Connection, think: bool | str
) -> None:
    response = await ask(stack.gateway, {"message": "hi", "model": "llava", "think": think})
    await expect_refusal(response, 422, "model_cannot_think", stack, db, "'llava' cannot think")


async def test_a_model_that_cannot_think_may_be_told_not_to(stack: Stack, db: asyncpg.Connection) -> None:
    result = await read_sse(await ask(stack.gateway, {"message": "hi", "model": "llava", "think": False}))
    assert result.events[-1]["type"] == "done"
    assert stack.emulator.chats[-1].body["think"] is False
    assert await db.fetchval("SELECT thinking FROM messages WHERE role = 'assistant'") is None


@pytest.mark.parametrize("think", ["yes", "HIGH", "true", "", 1, 0, 1.5, [], {"level": "high"}])
async def test_bad_think_values_are_refused_naming_the_field(
    stack: Stack, db: asyncpg.Connection, think: object
) -> None:
    response = await ask(stack.gateway, {"message": "hi", "model": "qwen3", "think": think})
    await expect_refusal(response, 400, "bad_request", stack, db, "think must be")


async def test_a_bad_think_form_field_is_refused(stack: Stack, db: asyncpg.Connection) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("message", "hi")
    form.add_field("model", "qwen3")
    form.add_field("think", "very")
    response = await stack.gateway.post("/api/stream-message", data=form, headers=auth_headers())
    await expect_refusal(response, 400, "bad_request", stack, db, "think must be")


async def test_without_model_detection_ollama_decides(stack: Stack, db: asyncpg.Connection) -> None:
    """Detection off: the gateway cannot know, so Ollama's own refusal comes back (502), nothing kept."""
    gateway = await stack.make_gateway(VISION_MODEL_DETECTION_ENABLED="false")
    response = await ask(gateway, {"message": "hi", "model": "llava", "think": True})
    assert response.status == 502, await response.text()
    body = await response.json()
    assert body["error"]["code"] == "upstream_error"
    assert '"llava" does not support thinking' in body["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def read_event(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next event of a stream still running (pings skipped)."""
    while True:
        line = await response.content.readline()
        if line.startswith(b"data: "):
            await response.content.readline()  # the blank line after it
            event: dict[str, Any] = json.loads(line[len(b"data: ") :])
            return event


async def test_stop_mid_thinking_keeps_the_partial_thinking(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.chunk_delay = 0.15
    response = await ask(stack.gateway, {"message": "What is 2+2?", "model": "qwen3", "think": True})
    start = await read_event(response)
    received = [await read_event(response), await read_event(response)]
    assert [e["type"] for e in received] == ["thinking", "thinking"]
    stop = await stack.gateway.post(f"/api/stream-message/{start['stream_id']}/stop", headers=auth_headers())
    assert stop.status == 200
    rest = await read_sse(response)
    assert rest.events[-1]["type"] == "done"
    assert rest.events[-1]["done_reason"] == "stopped"
    assert rest.events[-1]["saved"] is True
    assert rest.of("chunk") == [], "stopped while still thinking"
    partial = "".join(e["content"] for e in [*received, *rest.of("thinking")])
    assert partial
    assert QWEN.thinking_reply.startswith(partial)
    assert partial != QWEN.thinking_reply
    row = await db.fetchrow(ASSISTANT_ROW)
    assert (row["status"], row["content"], row["thinking"]) == ("stopped", "", partial)
    [_, answer] = await history(stack, start["conversation_id"])
    assert (answer["status"], answer["content"], answer["thinking"]) == ("stopped", "", partial)


async def test_client_gone_mid_thinking_keeps_the_partial_thinking(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.chunk_delay = 0.2
    response = await ask(stack.gateway, {"message": "What is 2+2?", "model": "qwen3"})
    await read_event(response)
    first = await read_event(response)
    assert first["type"] == "thinking"
    response.close()
    await stack.emulator.wait_for_disconnect(within=5)
    for _ in range(50):
        row = await db.fetchrow(ASSISTANT_ROW)
        if row["status"] != "streaming":
            break
        await asyncio.sleep(0.05)
    assert (row["status"], row["error"], row["content"]) == ("stopped", "client disconnected", "")
    assert row["thinking"]
    assert row["thinking"].startswith(first["content"])
    assert QWEN.thinking_reply.startswith(row["thinking"])


async def test_an_upstream_error_mid_thinking_keeps_it_and_says_partial(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.fail_after_chunks = 3
    result = await read_sse(await ask(stack.gateway, {"message": "What is 2+2?", "model": "qwen3", "think": "high"}))
    error = result.events[-1]
    assert error["type"] == "error"
    assert (error["partial"], error["saved"]) == (True, True), "thinking was streamed and is stored"
    assert len(result.of("thinking")) == 3
    row = await db.fetchrow(ASSISTANT_ROW)
    assert (row["status"], row["content"], row["thinking"]) == ("error", "", thoughts(result))


async def test_thinking_is_saved_while_it_streams(
    stack: Stack, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.vision_gateway.chat.progress as progress

    monkeypatch.setattr(progress, "PROGRESS_SAVE_SECONDS", 0.3)  # read when a gateway starts
    gateway = await stack.make_gateway()
    stack.emulator.chunk_delay = 0.15
    response = await ask(gateway, {"message": "What is 2+2?", "model": "qwen3", "think": True})
    seen = None
    for _ in range(60):
        await asyncio.sleep(0.1)
        row = await db.fetchrow(ASSISTANT_ROW)
        if row and row["status"] == "streaming" and row["thinking"]:
            seen = row
            break
    result = await read_sse(response)
    assert seen is not None, "some of the thinking was in the database before the stream ended"
    assert seen["content"] == "", "saved while still thinking: no answer yet"
    assert QWEN.thinking_reply.startswith(seen["thinking"])
    assert thoughts(result) == QWEN.thinking_reply
