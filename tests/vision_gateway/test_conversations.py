"""GET /api/conversations and DELETE /api/conversations/{id} against the real stack."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.vision_gateway.conversations import conversation_title
from tests.conftest import SERVICE_TOKEN, auth_headers
from tests.image_store.conftest import photo
from tests.vision_gateway.conftest import Stack, ask, read_sse


async def new_turn(stack: Stack, message: str, user: str = "alice", **fields: Any) -> dict[str, Any]:
    result = await read_sse(await ask(stack.gateway, {"message": message, "model": "llava", **fields}, user=user))
    assert result.status == 200
    assert result.events[-1]["type"] == "done", result.events
    return result.events[0]


async def listing(stack: Stack, user: str = "alice", **query: str) -> dict[str, Any]:
    response = await stack.gateway.get("/api/conversations", params=query, headers=auth_headers(user))
    body = await response.json()
    assert response.status == 200, body
    return body


async def test_list_is_newest_activity_first_with_titles_counts_and_images(stack: Stack) -> None:
    image_id = await stack.upload(photo("chelsea.png"), content_type="image/png")
    first = await new_turn(stack, "What is in this picture of my cat on the windowsill today?", image_ids=[image_id])
    second = await new_turn(stack, "Hello")
    third = await new_turn(stack, "   Short   question  ")
    await new_turn(stack, "bob's own", user="bob")
    await new_turn(stack, "And now?", conversation_id=first["conversation_id"])  # activity moves it to the top

    body = await listing(stack)
    assert body["next_cursor"] is None
    rows = body["conversations"]
    assert [r["id"] for r in rows] == [first["conversation_id"], third["conversation_id"], second["conversation_id"]]
    assert [r["title"] for r in rows] == ["What is in this picture of my cat…", "Short question", "Hello"]
    assert [r["message_count"] for r in rows] == [4, 2, 2]
    assert [r["has_images"] for r in rows] == [True, False, False]
    activity = [r["last_activity_at"] for r in rows]
    assert activity == sorted(activity, reverse=True)
    assert all(r["created_at"] <= r["last_activity_at"] for r in rows)
    assert [r["title"] for r in (await listing(stack, user="bob"))["conversations"]] == ["bob's own"]
    assert (await listing(stack, user="carol")) == {"conversations": [], "next_cursor": None}


async def test_cursor_pages_through_everything_once(stack: Stack) -> None:
    created = [(await new_turn(stack, f"question number {i}"))["conversation_id"] for i in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        body = await listing(stack, **query)
        pages += 1
        seen += [r["id"] for r in body["conversations"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(body["conversations"]) == 2
    assert pages == 3
    assert seen == list(reversed(created))


async def test_delete_removes_messages_and_unlinks_images(stack: Stack, db: asyncpg.Connection) -> None:
    image_id = await stack.upload(photo("chelsea.png"), content_type="image/png")
    kept = await new_turn(stack, "keep me")
    doomed = await new_turn(stack, "What is this?", image_ids=[image_id])
    response = await stack.gateway.delete(f"/api/conversations/{doomed['conversation_id']}", headers=auth_headers())
    assert response.status == 204
    conversation_id = uuid.UUID(doomed["conversation_id"])
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE id = $1", conversation_id) == 0
    assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", conversation_id) == 0
    image = await db.fetchrow("SELECT owner_id, message_id FROM images WHERE id = $1", uuid.UUID(image_id))
    assert image is not None, "unlink is the default: the image stays the user's"
    assert image["message_id"] is None
    async with aiohttp.ClientSession() as session:
        url = str(stack.store.make_url(f"/api/images/{image_id}"))
        async with session.get(url, headers=auth_headers()) as served:
            assert served.status == 200
    assert [r["id"] for r in (await listing(stack))["conversations"]] == [kept["conversation_id"]]
    again = await stack.gateway.delete(f"/api/conversations/{doomed['conversation_id']}", headers=auth_headers())
    assert again.status == 404


async def test_delete_with_images_delete_removes_them_from_the_store(stack: Stack, db: asyncpg.Connection) -> None:
    image_id = await stack.upload(photo("chelsea.png"), content_type="image/png")
    other = await stack.upload(photo("rocket.jpg"))
    doomed = await new_turn(stack, "What is this?", image_ids=[image_id])
    response = await stack.gateway.delete(
        f"/api/conversations/{doomed['conversation_id']}", params={"images": "delete"}, headers=auth_headers()
    )
    assert response.status == 204
    remaining = await db.fetch("SELECT id FROM images")
    assert [str(r["id"]) for r in remaining] == [other], "only the conversation's image was deleted"


async def test_deleting_a_conversation_stops_its_live_stream(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.chunk_delay = 0.3
    response = await ask(stack.gateway, {"message": "Tell me a long story", "model": "llava"})
    assert response.status == 200
    start = json.loads((await response.content.readline()).decode().removeprefix("data: "))
    assert start["type"] == "start"
    deleted = await stack.gateway.delete(f"/api/conversations/{start['conversation_id']}", headers=auth_headers())
    assert deleted.status == 204
    rest = (await response.read()).decode()
    final = json.loads([line for line in rest.split("\n") if line.startswith("data: ")][-1].removeprefix("data: "))
    assert final["type"] == "done"
    assert final["done_reason"] == "stopped"
    assert stack.emulator.chats[-1].cancelled, "the Ollama request was closed"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_delete_bad_input(stack: Stack, db: asyncpg.Connection) -> None:
    alices = (await new_turn(stack, "mine"))["conversation_id"]
    cases = [
        (f"/api/conversations/{alices}", auth_headers("bob"), 404, "not_found"),
        (f"/api/conversations/{uuid.uuid4()}", auth_headers(), 404, "not_found"),
        ("/api/conversations/not-a-uuid", auth_headers(), 404, "not_found"),
        (f"/api/conversations/{alices}", {"X-User-Id": "alice"}, 401, "unauthorized"),
        (f"/api/conversations/{alices}", {**auth_headers(), "Authorization": "Bearer wrong"}, 401, "unauthorized"),
        (f"/api/conversations/{alices}", {"Authorization": f"Bearer {SERVICE_TOKEN}"}, 400, "bad_request"),
        (f"/api/conversations/{alices}?images=shred", auth_headers(), 400, "bad_request"),
    ]
    for path, headers, status, code in cases:
        response = await stack.gateway.delete(path, headers=headers)
        body = await response.json()
        assert (response.status, body["error"]["code"]) == (status, code), (path, headers, body)
    assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", uuid.UUID(alices)) == 2


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": ""},
        {"cursor": ""},
        {"cursor": "!!!"},
        {"cursor": _b64(b"not json")},
        {"cursor": _b64(b'{"a": 1}')},
        {"cursor": _b64(b'["2026-01-01T00:00:00+00:00", "not-a-uuid"]')},
        {"cursor": _b64(b'["yesterday", "00000000-0000-0000-0000-000000000000"]')},
        {"cursor": _b64(b'["2026-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]')},
    ],
)
async def test_list_bad_input_is_400(stack: Stack, query: dict[str, str]) -> None:
    response = await stack.gateway.get("/api/conversations", params=query, headers=auth_headers())
    body = await response.json()
    assert response.status == 400, body
    assert body["error"]["code"] == "bad_request"
    assert ("limit" if "limit" in query else "cursor") in body["error"]["message"]


async def test_list_needs_a_token_and_a_user(stack: Stack) -> None:
    for headers, status in [({}, 401), ({"Authorization": "Bearer wrong", "X-User-Id": "a"}, 401)]:
        response = await stack.gateway.get("/api/conversations", headers=headers)
        assert response.status == status
        assert (await response.json())["error"]["code"] == "unauthorized"
    response = await stack.gateway.get("/api/conversations", headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
    assert response.status == 400
    assert "X-User-Id" in (await response.json())["error"]["message"]


@pytest.mark.parametrize(
    ("first_message", "title"),
    [
        (None, None),
        ("   \n ", None),
        ("Hello", "Hello"),
        ("one two three four five six seven eight", "one two three four five six seven eight"),
        ("one two three four five six seven eight nine", "one two three four five six seven eight…"),
        ("a" * 100, "a" * 80 + "…"),
        ("short " + "b" * 90, "short…"),
    ],
)
def test_title_is_the_first_words(first_message: str | None, title: str | None) -> None:
    assert conversation_title(first_message) == title
