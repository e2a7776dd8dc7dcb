"""What schemathesis found the services accepting (or failing on) against their documents, one case each."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import auth_headers
from tests.contract.conftest import LiveStack


async def post_chat(stack: LiveStack, body: Any = None, data: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.gateway_url}/api/stream-message", headers=auth_headers(), json=body, data=data
        ) as response,
    ):
        payload = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, payload


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"message": "hi", "model": "llava", "conversation_id": ""}, "conversation_id must be a UUID"),
        ({"message": "hi", "model": "llava", "options": None}, "options must be a JSON object"),
        ({"message": "hi", "model": "llava", "image_ids": None}, "image_ids must be a list"),
        ({"message": "hi", "model": "llava", "image_ids": ""}, "image_ids must be a list"),
        ({"message": "hi\u0000there", "model": "llava"}, "message must not contain NUL"),
        ({"message": "hi", "model": "llava\u0000"}, "model must not contain NUL"),
        ({"message": "hi", "model": ""}, "model is required"),
        ({"message": " \u00a0\u2003", "model": "llava"}, "message is required"),
    ],
)
async def test_malformed_chat_fields_are_400_and_start_nothing(
    live_stack: LiveStack, db: asyncpg.Connection, body: dict[str, Any], message: str
) -> None:
    status, payload = await post_chat(live_stack, body)
    assert status == 400, payload
    assert payload["error"]["code"] == "bad_request"
    assert message in payload["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert live_stack.emulator.chats == []


async def test_a_control_space_model_name_is_not_sent_to_ollama_empty(live_stack: LiveStack) -> None:
    """ "\\u001d" used to be stripped by str.strip() into "" and sent to /api/show: a 502."""
    status, payload = await post_chat(live_stack, {"message": "hi", "model": "\u001d"})
    assert (status, payload["error"]["code"]) == (404, "unknown_model"), payload
    # Ollama's listing decides that no such model exists: nothing is asked of /api/show, least of all "".
    assert live_stack.emulator.shown == []


async def test_multipart_image_ids_may_repeat_or_be_a_json_array(live_stack: LiveStack) -> None:
    missing = "0b0e7b8c-2f4a-4f43-8f5e-0c2d5a3b9e11"
    for parts in ([missing, missing], [f'["{missing}"]']):
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("message", "hi")
        form.add_field("model", "llava")
        for part in parts:
            form.add_field("image_ids", part)
        status, payload = await post_chat(live_stack, data=form)
        assert (status, payload["error"]["code"]) == (404, "image_not_found"), payload
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in (("message", "hi"), ("model", "llava"), ("image_ids", "{}")):
        form.add_field(name, value)
    status, payload = await post_chat(live_stack, data=form)
    assert (status, payload["error"]["code"]) == (400, "bad_request"), payload


@pytest.mark.parametrize("query", ["message_id=", "cursor=", "message_id=&cursor="])
async def test_empty_ids_in_the_image_list_query_are_400(live_stack: LiveStack, query: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{live_stack.store_url}/api/images?{query}", headers=auth_headers()) as response,
    ):
        payload = await response.json()
    assert response.status == 400, payload
    assert payload["error"]["code"] == "bad_request"


async def test_an_empty_message_id_on_upload_or_link_is_400(live_stack: LiveStack, db: asyncpg.Connection) -> None:
    from tests.image_store.conftest import png

    async with aiohttp.ClientSession() as session:
        url = f"{live_stack.store_url}/api/images?message_id="
        headers = {**auth_headers(), "Content-Type": "image/png"}
        async with session.post(url, data=png(), headers=headers) as response:
            payload = await response.json()
            assert (response.status, payload["error"]["message"]) == (400, "message_id must be a UUID"), payload
        assert await db.fetchval("SELECT count(*) FROM images") == 0
        async with session.post(f"{live_stack.store_url}/api/images", data=png(), headers=headers) as response:
            assert response.status == 201
            image_id = (await response.json())["id"]
        link = f"{live_stack.store_url}/api/images/{image_id}"
        async with session.patch(link, json={"message_id": ""}, headers=auth_headers()) as response:
            payload = await response.json()
            assert (response.status, payload["error"]["message"]) == (400, "message_id must be a UUID"), payload
