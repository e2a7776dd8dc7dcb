"""Every ask entry (JSON, multipart, /v1) sits on one path, so each guard holds on each (issue 17).

Deep nesting is the case that broke before: `/v1` answered 500 for JSON nested deeper than the
parser goes while `/api/stream-message` answered 400. Each refusal here is checked for its status,
its code, and for having written nothing and reached no one.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import auth_headers
from tests.vision_gateway.conftest import Stack

LEVELS = 10_000
NESTED = "[" * LEVELS + "]" * LEVELS


def json_body(field: str) -> bytes:
    return ('{"message": "hi", "model": "llava", "%s": %s}' % (field, NESTED)).encode()  # noqa: UP031


async def nothing_happened(stack: Stack, db: asyncpg.Connection) -> None:
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT count(*) FROM images") == 0
    assert stack.emulator.chats == []


@pytest.mark.parametrize("field", ["message", "model", "conversation_id", "image_ids", "options", "format",
                                   "keep_alive", "think", "unknown_field"])  # fmt: skip
async def test_deep_nesting_in_a_json_ask_is_400(stack: Stack, db: asyncpg.Connection, field: str) -> None:
    response = await stack.gateway.post(
        "/api/stream-message",
        data=json_body(field),
        headers={**auth_headers(), "Content-Type": "application/json"},
    )
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (400, "bad_request"), body
    await nothing_happened(stack, db)


# A form's `message` is text, whatever it looks like; these parts hold JSON text or a word.
@pytest.mark.parametrize("field", ["options", "format", "image_ids", "think", "keep_alive"])
async def test_deep_nesting_in_a_form_part_is_400(stack: Stack, db: asyncpg.Connection, field: str) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    fields = {"message": "hi", "model": "llava", field: NESTED}
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("images", b"\x89PNG not reached", filename="a.png", content_type="image/png")
    response = await stack.gateway.post("/api/stream-message", data=form, headers=auth_headers())
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (400, "bad_request"), body
    await nothing_happened(stack, db)


@pytest.mark.parametrize(
    "body",
    [
        '{"model": "llava", "messages": %s}' % NESTED,  # noqa: UP031
        '{"model": "llava", "messages": [{"role": "user", "content": "hi"}], "temperature": %s}' % NESTED,  # noqa: UP031
        '{"model": "llava", "messages": [{"role": "user", "content": %s}]}' % NESTED,  # noqa: UP031
    ],
    ids=["messages", "temperature", "content"],
)
async def test_deep_nesting_in_a_v1_body_is_400_in_openai_shape(
    stack: Stack, db: asyncpg.Connection, body: str
) -> None:
    response = await stack.gateway.post(
        "/v1/chat/completions", data=body.encode(), headers={**auth_headers(), "Content-Type": "application/json"}
    )
    payload: dict[str, Any] = await response.json()
    assert response.status == 400, payload
    assert payload["error"]["code"] == "bad_request"
    assert payload["error"]["type"] == "invalid_request_error"
    await nothing_happened(stack, db)


@pytest.mark.parametrize(
    ("json_fields", "openai_fields", "message"),
    [
        ({"options": {"temperature": 3}}, {"temperature": 3}, "temperature must be a number from 0 to 2"),
        ({"options": {"seed": True}}, {"seed": True}, "seed must be an integer from -2147483648 to 2147483647"),
        ({"model": ""}, {"model": ""}, "model is required and must be a model name"),
        ({"model": "a\x00"}, {"model": "a\x00"}, "model must not contain NUL characters"),
        ({"think": "loud"}, {"reasoning_effort": "loud"}, ""),
        ({"format": {"type": "strin"}}, {"response_format": {"type": "json_schema", "json_schema": {"schema":
         {"type": "strin"}}}}, "is not a valid JSON Schema at /type"),
    ],
)  # fmt: skip
async def test_the_same_bad_field_gets_the_same_status_and_code_on_every_entry(
    stack: Stack, db: asyncpg.Connection, json_fields: dict[str, Any], openai_fields: dict[str, Any], message: str
) -> None:
    native = await stack.gateway.post(
        "/api/stream-message", json={"message": "hi", "model": "llava", **json_fields}, headers=auth_headers()
    )
    openai = await stack.gateway.post(
        "/v1/chat/completions",
        json={"model": "llava", "messages": [{"role": "user", "content": "hi"}], **openai_fields},
        headers=auth_headers(),
    )
    native_error, openai_error = (await native.json())["error"], (await openai.json())["error"]
    assert (native.status, native_error["code"]) == (openai.status, openai_error["code"]) == (400, "bad_request")
    assert message in native_error["message"]
    assert message in openai_error["message"]
    await nothing_happened(stack, db)
