"""`reasoning_effort` and a thinking model's reasoning on /v1/chat/completions, through the official client.

As Ollama's own /v1: the effort is sent as `think` ("none" as false) and the reasoning comes back as
`delta.reasoning` / `message.reasoning`, fields the client keeps as extras.
"""

from __future__ import annotations

import asyncpg
import openai
import pytest

from cli.ollama_emulator import OllamaEmulator
from tests.vision_gateway.conftest import Stack

QWEN = OllamaEmulator().find("qwen3")
ASK = [{"role": "user", "content": "What is 2+2?"}]


async def test_streamed_reasoning_comes_before_the_answer_and_is_stored(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    stream = await openai_client.chat.completions.create(
        model="qwen3", messages=ASK, stream=True, reasoning_effort="high"
    )
    reasoning, content, order = [], [], []
    async for chunk in stream:
        delta = chunk.choices[0].delta
        extra = (delta.model_extra or {}).get("reasoning")
        if extra:
            reasoning.append(extra)
            order.append("reasoning")
        if delta.content:
            content.append(delta.content)
            order.append("content")
    assert stack.emulator.chats[-1].body["think"] == "high"
    assert "".join(reasoning) == QWEN.thinking_reply
    assert "".join(content) == QWEN.reply
    assert order.index("content") > max(i for i, kind in enumerate(order) if kind == "reasoning")
    row = await db.fetchrow("SELECT content, thinking FROM messages WHERE role = 'assistant'")
    assert (row["content"], row["thinking"]) == (QWEN.reply, QWEN.thinking_reply)


async def test_whole_answer_carries_the_reasoning(stack: Stack, openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(model="qwen3", messages=ASK, reasoning_effort="low")
    message = completion.choices[0].message
    assert message.content == QWEN.reply
    assert (message.model_extra or {}).get("reasoning") == QWEN.thinking_reply
    assert stack.emulator.chats[-1].body["think"] == "low"


async def test_effort_none_turns_thinking_off(stack: Stack, openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(model="qwen3", messages=ASK, reasoning_effort="none")
    assert stack.emulator.chats[-1].body["think"] is False
    assert "reasoning" not in (completion.choices[0].message.model_extra or {})


async def test_unset_effort_leaves_ollamas_default(stack: Stack, openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(model="qwen3", messages=ASK)
    assert "think" not in stack.emulator.chats[-1].body
    assert (completion.choices[0].message.model_extra or {}).get("reasoning") == QWEN.thinking_reply


async def test_a_model_that_cannot_think_is_refused(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        await openai_client.chat.completions.create(model="llava", messages=ASK, reasoning_effort="medium")
    assert refused.value.code == "model_cannot_think"
    assert refused.value.param == "reasoning_effort"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert stack.emulator.chats == []


@pytest.mark.parametrize("effort", ["minimal", "HIGH", "max", 3])
async def test_bad_efforts_name_the_field(stack: Stack, openai_client: openai.AsyncOpenAI, effort: object) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.chat.completions.create(
            model="qwen3", messages=ASK, extra_body={"reasoning_effort": effort}
        )
    assert refused.value.param == "reasoning_effort"
    assert stack.emulator.chats == []
