"""`format`, `keep_alive` and `options` over HTTP: accepted ones reach Ollama, refused ones write nothing.

A real photo is asked about with a JSON Schema; the streamed chunks and the stored answer must both
be JSON valid against it (the emulator writes what a grammar-bound model writes: cli/ollama_structured.py).
"""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import asyncpg
import jsonschema
import openai
import pytest

from tests.conftest import auth_headers
from tests.image_store.conftest import photo
from tests.vision_gateway.conftest import Stack, ask, read_sse
from tests.vision_gateway.test_faults import expect_refusal

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "minLength": 3},
        "colours": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "objects": {"type": "integer", "minimum": 1},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "outdoors": {"type": "boolean"},
        "kind": {"enum": ["photo", "drawing"]},
        "location": {"type": "object", "properties": {"place": {"type": "string"}}, "required": ["place"]},
    },
    "required": ["subject", "colours", "objects", "confidence", "outdoors", "kind", "location"],
    "additionalProperties": False,
}
OPTIONS = {"temperature": 0, "seed": 42, "top_k": 20, "num_ctx": 4096, "stop": ["\n\n"], "repeat_penalty": 1.1}


async def assistant_content(db: asyncpg.Connection) -> str:
    return await db.fetchval("SELECT content FROM messages WHERE role = 'assistant' AND status = 'complete'")


async def test_a_photo_asked_with_a_schema_answers_json_that_follows_it(stack: Stack, db: asyncpg.Connection) -> None:
    image_id = await stack.upload(photo("rocket.jpg"))
    body = {
        "message": "Describe this photo.",
        "model": "llava",
        "image_ids": [image_id],
        "format": SCHEMA,
        "options": OPTIONS,
        "keep_alive": "10m",
    }
    result = await read_sse(await ask(stack.gateway, body))
    assert result.status == 200
    assert len(result.of("chunk")) >= 3, "streamed in several chunks, not one"
    answer = json.loads(result.text)
    jsonschema.validate(answer, SCHEMA)
    stored = await assistant_content(db)
    assert stored == result.text, "the stored answer is the text as streamed"
    jsonschema.validate(json.loads(stored), SCHEMA)
    [chat] = stack.emulator.chats
    assert (chat.body["format"], chat.body["options"], chat.body["keep_alive"]) == (SCHEMA, OPTIONS, "10m")
    assert [image.format for image in chat.images] == ["JPEG"], "the photo reached the model"


async def test_format_json_answers_a_json_object(stack: Stack, db: asyncpg.Connection) -> None:
    result = await read_sse(await ask(stack.gateway, {"message": "hi", "model": "llama3.2", "format": "json"}))
    assert isinstance(json.loads(result.text), dict), result.text
    assert stack.emulator.chats[-1].body["format"] == "json"
    assert "keep_alive" not in stack.emulator.chats[-1].body, "absent fields stay Ollama's defaults"
    assert json.loads(await assistant_content(db)) == json.loads(result.text)


async def test_multipart_format_keep_alive_and_options_parts(stack: Stack, db: asyncpg.Connection) -> None:
    form = aiohttp.FormData()
    form.add_field("message", "Describe this photo.")
    form.add_field("model", "llava")
    form.add_field("format", json.dumps(SCHEMA), content_type="application/json")
    form.add_field("keep_alive", "-1")
    form.add_field("options", json.dumps({"seed": 7}), content_type="application/json")
    form.add_field("images", io.BytesIO(photo("rocket.jpg")), filename="rocket.jpg", content_type="image/jpeg")
    response = await stack.gateway.post("/api/stream-message", data=form, headers=auth_headers())
    result = await read_sse(response)
    jsonschema.validate(json.loads(result.text), SCHEMA)
    sent = stack.emulator.chats[-1].body
    assert (sent["format"], sent["keep_alive"], sent["options"]) == (SCHEMA, -1, {"seed": 7})
    plain = aiohttp.FormData(default_to_multipart=True)
    for name, value in (("message", "hi"), ("model", "llama3.2"), ("format", "json"), ("keep_alive", "1h30m")):
        plain.add_field(name, value)
    await read_sse(await stack.gateway.post("/api/stream-message", data=plain, headers=auth_headers()))
    assert (stack.emulator.chats[-1].body["format"], stack.emulator.chats[-1].body["keep_alive"]) == ("json", "1h30m")


@pytest.mark.parametrize(
    ("fields", "part"),
    [
        ({"options": {"temperature": 3}}, "options.temperature must be a number from 0 to 2"),
        ({"options": {"top_k": True}}, "options.top_k must be an integer"),
        ({"options": {"num_gpu": 99}}, "options.num_gpu is not a supported option"),
        ({"options": {"stop": "\n"}}, "options.stop must be a list"),
        ({"keep_alive": "-1"}, "keep_alive must be a number of seconds or a duration"),
        ({"keep_alive": "forever"}, "keep_alive must be"),
        ({"keep_alive": True}, "keep_alive must be"),
        ({"format": "xml"}, 'format must be "json" or a JSON Schema object'),
        ({"format": None}, 'format must be "json"'),
        ({"format": {"type": "strin"}}, "format is not a valid JSON Schema at /type"),
        ({"format": {"description": "x" * 20_000}}, "format must be at most 16384 characters"),
    ],
)
async def test_refused_fields_write_nothing_and_reach_no_one(
    stack: Stack, db: asyncpg.Connection, fields: dict[str, Any], part: str
) -> None:
    response = await ask(stack.gateway, {"message": "hi", "model": "llava", **fields})
    await expect_refusal(response, 400, "bad_request", stack, db, part)
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


async def test_a_refused_multipart_field_keeps_no_upload(stack: Stack, db: asyncpg.Connection) -> None:
    form = aiohttp.FormData()
    form.add_field("message", "what?")
    form.add_field("model", "llava")
    form.add_field("images", io.BytesIO(photo("rocket.jpg")), filename="rocket.jpg", content_type="image/jpeg")
    form.add_field("keep_alive", "5 minutes")
    response = await stack.gateway.post("/api/stream-message", data=form, headers=auth_headers())
    await expect_refusal(response, 400, "bad_request", stack, db, "keep_alive must be")
    assert await db.fetchval("SELECT count(*) FROM images") == 0, "the image uploaded before the refusal is gone"


# ---- the OpenAI-compatible endpoint maps its own fields onto the same rules --------------------------


async def test_openai_response_format_json_schema(stack: Stack, openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "Describe a rocket."}],
        response_format={"type": "json_schema", "json_schema": {"name": "scene", "schema": SCHEMA, "strict": True}},
        temperature=0.5,
        presence_penalty=0.5,
        max_completion_tokens=500,
    )
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), SCHEMA)
    sent = stack.emulator.chats[-1].body
    assert sent["format"] == SCHEMA
    assert sent["options"] == {"temperature": 0.5, "presence_penalty": 0.5, "num_predict": 500}
    plain = await openai_client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}], response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)
    assert stack.emulator.chats[-1].body["format"] == "json"


@pytest.mark.parametrize(
    ("extra", "param", "part"),
    [
        ({"temperature": 3}, "temperature", "temperature must be a number from 0 to 2"),
        ({"seed": 2**40}, "seed", "seed must be an integer"),
        ({"max_tokens": 10**6}, "max_tokens", "max_tokens must be an integer from 1 to 131072"),
        ({"stop": ["x" * 300]}, "stop", "stop must be a list"),
        ({"response_format": {"type": "xml"}}, "response_format", "response_format.type must be"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.schema", "is required"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}},
            "response_format.json_schema.schema",
            "response_format.json_schema.schema is not a valid JSON Schema",
        ),
    ],
)
async def test_openai_refusals_name_the_param(
    stack: Stack,
    db: asyncpg.Connection,
    openai_client: openai.AsyncOpenAI,
    extra: dict[str, Any],
    param: str,
    part: str,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], extra_body=extra
        )
    assert refused.value.param == param
    assert part in refused.value.message
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert stack.emulator.chats == []


# ---- the operator's caps: VISION_MAX_KEEP_ALIVE_SECONDS and VISION_MAX_NUM_CTX --------------------


@pytest.mark.parametrize(
    ("fields", "part"),
    [
        ({"keep_alive": 601}, "keep_alive must be at most 600 s on this server"),
        ({"keep_alive": "10m1s"}, "keep_alive must be at most 600 s"),
        ({"keep_alive": -1}, "keep_alive must not keep the model loaded for ever here (at most 600 s)"),
        ({"keep_alive": "-1m"}, "keep_alive must not keep the model loaded for ever"),
        ({"options": {"num_ctx": 8193}}, "options.num_ctx must be at most 8192 on this server"),
    ],
)
async def test_the_operators_caps_refuse_more_before_anything_is_written(
    stack: Stack, db: asyncpg.Connection, fields: dict[str, Any], part: str
) -> None:
    capped = await stack.make_gateway(VISION_MAX_KEEP_ALIVE_SECONDS="600", VISION_MAX_NUM_CTX="8192")
    response = await ask(capped, {"message": "hi", "model": "llava", **fields})
    await expect_refusal(response, 400, "bad_request", stack, db, part)
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


async def test_within_the_operators_caps_the_values_reach_ollama(stack: Stack, db: asyncpg.Connection) -> None:
    capped = await stack.make_gateway(VISION_MAX_KEEP_ALIVE_SECONDS="600", VISION_MAX_NUM_CTX="8192")
    body = {"message": "hi", "model": "llava", "keep_alive": "9m59.5s", "options": {"num_ctx": 8192}}
    result = await read_sse(await ask(capped, body))
    assert result.status == 200, result.events
    assert result.events[-1]["type"] == "done"
    sent = stack.emulator.chats[-1].body
    assert (sent["keep_alive"], sent["options"]["num_ctx"]) == ("9m59.5s", 8192)
