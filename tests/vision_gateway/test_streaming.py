"""POST /api/stream-message end to end: image-store + gateway + Ollama emulator + Postgres."""

from __future__ import annotations

import asyncio
import io
import json
import uuid

import aiohttp
import asyncpg
import pytest

from cli.ollama_emulator import EmulatedModel, OllamaEmulator
from tests.conftest import auth_headers
from tests.vision_gateway.conftest import Stack, ask, big_photo, read_sse

LLAVA_REPLY = OllamaEmulator().find("llava").reply


@pytest.mark.postgres_paths
async def test_text_only_request_streams_and_is_stored(stack: Stack, db: asyncpg.Connection) -> None:
    response = await ask(stack.gateway, {"message": "Hello there", "model": "llama3.2"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"].startswith("no-cache")
    result = await read_sse(response)
    kinds = [e["type"] for e in result.events]
    assert kinds[0] == "start"
    assert kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"chunk"}
    start, done = result.events[0], result.events[-1]
    assert start["model"] == "llama3.2"
    assert start["vision"] is False
    assert start["image_ids"] == []
    assert result.text == "Hello! How can I help you today?"
    assert done["message_id"] == start["message_id"]
    assert done["done_reason"] == "stop"
    assert done["stats"]["completion_tokens"] == len(result.of("chunk"))
    assert done["stats"]["prompt_tokens"] == 2
    assert done["stats"]["time_to_first_token_ms"] > 0
    rows = await db.fetch("SELECT role, content, status, has_images FROM messages ORDER BY created_at")
    assert [tuple(r) for r in rows] == [
        ("user", "Hello there", "complete", False),
        ("assistant", "Hello! How can I help you today?", "complete", False),
    ]
    sent = stack.emulator.chats[-1].body
    assert sent["stream"] is True
    assert sent["messages"] == [{"role": "user", "content": "Hello there"}]


async def test_photo_by_id_is_downscaled_and_sent_as_plain_base64(stack: Stack, db: asyncpg.Connection) -> None:
    image_id = await stack.upload(big_photo(2400, 1800))
    result = await read_sse(
        await ask(stack.gateway, {"message": "What animal is this?", "model": "llava", "image_ids": [image_id]})
    )
    assert result.status == 200
    start = result.events[0]
    assert start["vision"] is True
    assert start["image_ids"] == [image_id]
    assert result.text == LLAVA_REPLY
    record = stack.emulator.chats[-1]
    [seen] = record.images
    assert seen.format == "JPEG"
    assert seen.size == (1024, 768), "longest edge downscaled to VISION_MAX_IMAGE_EDGE"
    encoded = record.body["messages"][-1]["images"][0]
    assert not encoded.startswith("data:")
    user_row = await db.fetchrow("SELECT id, has_images, image_ids FROM messages WHERE role = 'user'")
    assert user_row["has_images"] is True
    assert [str(i) for i in user_row["image_ids"]] == [image_id]
    linked = await db.fetchval("SELECT message_id FROM images WHERE id = $1", uuid.UUID(image_id))
    assert linked == user_row["id"], "the image is linked to its message in the image-store"


@pytest.mark.postgres_paths
async def test_multipart_upload_is_forwarded_to_the_store(stack: Stack, db: asyncpg.Connection) -> None:
    form = aiohttp.FormData()
    form.add_field("message", "Describe this")
    form.add_field("model", "llava")
    form.add_field("images", io.BytesIO(big_photo(1600, 1200)), filename="cat.jpg", content_type="image/jpeg")
    response = await stack.gateway.post("/api/stream-message", data=form, headers=auth_headers())
    result = await read_sse(response)
    assert result.status == 200, result.events
    [image_id] = result.events[0]["image_ids"]
    owner = await db.fetchval("SELECT owner_id FROM images WHERE id = $1", uuid.UUID(image_id))
    assert owner == "alice"
    assert stack.emulator.chats[-1].images[0].size == (1024, 768)


async def test_history_is_sent_with_its_images(stack: Stack) -> None:
    image_id = await stack.upload(big_photo(800, 600))
    first = await read_sse(
        await ask(stack.gateway, {"message": "What is this?", "model": "llava", "image_ids": [image_id]})
    )
    conversation_id = first.events[0]["conversation_id"]
    second = await read_sse(
        await ask(stack.gateway, {"message": "And its colour?", "model": "llava", "conversation_id": conversation_id})
    )
    assert second.status == 200
    assert second.events[0]["conversation_id"] == conversation_id
    messages = stack.emulator.chats[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == LLAVA_REPLY
    assert len(messages[0]["images"]) == 1, "the earlier image is re-sent as history"
    assert "images" not in messages[2]
    history = await stack.gateway.get(f"/api/conversations/{conversation_id}/messages", headers=auth_headers())
    listed = (await history.json())["messages"]
    assert [(m["role"], m["has_images"], m["image_ids"]) for m in listed] == [
        ("user", True, [image_id]),
        ("assistant", False, []),
        ("user", False, []),
        ("assistant", False, []),
    ]
    assert all(m["status"] == "complete" for m in listed)
    foreign = await stack.gateway.get(f"/api/conversations/{conversation_id}/messages", headers=auth_headers("mallory"))
    assert foreign.status == 404


async def test_heartbeats_while_the_model_loads(stack: Stack) -> None:
    stack.emulator.first_token_delay = 1.5
    result = await read_sse(await ask(stack.gateway, {"message": "hi", "model": "llava"}))
    assert result.pings >= 2, "`: ping` comments keep the connection alive during a slow load"
    assert result.events[0]["type"] == "start"
    assert result.events[-1]["type"] == "done"


async def test_legacy_capability_signals_are_understood(stack: Stack) -> None:
    image_id = await stack.upload(big_photo(500, 400))
    result = await read_sse(
        await ask(stack.gateway, {"message": "What is this?", "model": "gemma3", "image_ids": [image_id]})
    )
    assert result.status == 200
    assert result.events[0]["vision"] is True
    assert len(stack.emulator.chats[-1].images) == 1


async def test_models_list_with_vision_flags(stack: Stack) -> None:
    response = await stack.gateway.get("/api/models", headers=auth_headers())
    models = {m["name"]: m for m in (await response.json())["models"]}
    assert models["llava:latest"]["vision"] is True
    assert models["llama3.2:latest"]["vision"] is False
    assert models["gemma3:latest"]["vision"] is True
    assert "embedding" in models["nomic-embed-text:latest"]["capabilities"]
    assert (await stack.gateway.get("/api/models")).status == 401


async def test_capability_lookups_are_cached_and_shared(stack: Stack) -> None:
    stack.emulator.show_delay = 0.2
    results = await asyncio.gather(*(ask(stack.gateway, {"message": f"hi {i}", "model": "llama3.2"}) for i in range(5)))
    for response in results:
        assert (await read_sse(response)).events[-1]["type"] == "done"
    assert stack.emulator.show_calls == 1
    await read_sse(await ask(stack.gateway, {"message": "again", "model": "llama3.2"}))
    assert stack.emulator.show_calls == 1
    metrics = await (await stack.gateway.get("/metrics")).text()
    assert 'vision_gateway_capability_cache_requests_total{result="hit"} 1.0' in metrics


async def test_metrics_after_a_stream(stack: Stack) -> None:
    await read_sse(await ask(stack.gateway, {"message": "hi", "model": "llava"}))
    text = await (await stack.gateway.get("/metrics")).text()
    assert 'vision_gateway_streams_total{model="llava",outcome="completed"} 1.0' in text
    assert 'vision_gateway_time_to_first_token_seconds_count{model="llava"} 1.0' in text
    assert 'vision_gateway_upstream_time_to_first_chunk_seconds_count{model="llava"} 1.0' in text
    assert 'vision_gateway_tokens_total{model="llava",type="output"}' in text
    assert 'vision_gateway_streams_in_flight{model="llava"} 0.0' in text
    assert 'http_server_request_duration_seconds_count{method="POST",route="/api/stream-message"}' not in text


async def test_unknown_model_names_are_labelled_other(stack: Stack) -> None:
    stack.emulator.models.append(EmulatedModel("secret-internal-model:latest"))
    await read_sse(
        await stack.gateway.post(
            "/api/stream-message",
            json={"message": "hi", "model": "secret-internal-model"},
            headers=auth_headers(),
        )
    )
    text = await (await stack.gateway.get("/metrics")).text()
    # Discovered through /api/show, so it is a known model now; a never-seen name would be "other".
    assert 'model="secret-internal-model"' in text


@pytest.mark.parametrize("policy", ["text_only", "fallback_model"])
async def test_non_vision_model_fallbacks_announce_themselves(stack: Stack, policy: str) -> None:
    gateway = await stack.make_gateway(VISION_FALLBACK_POLICY=policy, VISION_FALLBACK_MODEL="llava")
    image_id = await stack.upload(big_photo(300, 200))
    result = await read_sse(
        await ask(gateway, {"message": "What is this?", "model": "llama3.2", "image_ids": [image_id]})
    )
    assert result.status == 200
    [notice] = result.of("notice")
    sent = stack.emulator.chats[-1]
    if policy == "text_only":
        assert notice["code"] == "images_ignored"
        assert sent.images == []
        assert sent.body["model"] == "llama3.2"
    else:
        assert notice["code"] == "fallback_model"
        assert sent.body["model"] == "llava"
        assert result.events[0]["model"] == "llava"
        assert len(sent.images) == 1


async def test_custom_image_endpoint_is_used_by_both_services(
    aiohttp_server, aiohttp_client, store_app, service_env: dict[str, str], emulator: OllamaEmulator
) -> None:
    from services.image_store.settings import load_image_store_settings
    from services.vision_gateway.app import create_app as create_gateway
    from services.vision_gateway.settings import load_gateway_settings

    env = {**service_env, "IMAGE_SERVE_ENDPOINT": "/v2/pictures"}
    ollama_server = await aiohttp_server(emulator.make_app())
    store = await aiohttp_server(store_app(load_image_store_settings(env)))
    gateway = await aiohttp_client(
        create_gateway(
            load_gateway_settings(
                {
                    **env,
                    "OLLAMA_URL": str(ollama_server.make_url("")).rstrip("/"),
                    "IMAGE_STORE_URL": str(store.make_url("")).rstrip("/"),
                }
            )
        )
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            str(store.make_url("/v2/pictures")),
            data=big_photo(400, 300),
            headers={**auth_headers(), "Content-Type": "image/jpeg"},
        ) as response,
    ):
        record = await response.json()
        assert response.status == 201, record
        assert record["url"].startswith("/v2/pictures/")
    result = await read_sse(await ask(gateway, {"message": "what?", "model": "llava", "image_ids": [record["id"]]}))
    assert result.events[-1]["type"] == "done"
    assert len(emulator.chats[-1].images) == 1


async def test_partial_answer_is_saved_while_streaming(
    stack: Stack, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.vision_gateway.chat.progress as chat_module

    monkeypatch.setattr(chat_module, "PROGRESS_SAVE_SECONDS", 0.3)  # read when a gateway starts
    gateway = await stack.make_gateway()
    stack.emulator.chunk_delay = 0.15
    response = await ask(gateway, {"message": "hi", "model": "llava"})
    seen_while_streaming = ""
    for _ in range(60):
        await asyncio.sleep(0.1)
        row = await db.fetchrow("SELECT status, content FROM messages WHERE role = 'assistant'")
        if row and row["status"] == "streaming" and row["content"]:
            seen_while_streaming = row["content"]
            break
    result = await read_sse(response)
    assert seen_while_streaming, "some of the answer was in the database before the stream ended"
    assert result.text.startswith(seen_while_streaming)
    final = await db.fetchrow("SELECT status, content FROM messages WHERE role = 'assistant'")
    assert (final["status"], final["content"]) == ("complete", result.text)


async def test_a_non_ascii_answer_reads_right_in_requests(stack: Stack) -> None:
    """requests decodes a body by the charset the header names (Latin-1 for a text/* without one):
    the event stream says utf-8, so iter_lines(decode_unicode=True) gets the answer as sent."""
    import requests

    stack.emulator.find("llama3.2").reply = "Grüße aus Köln — 東京 too 🐈"
    url = str(stack.gateway.make_url("/api/stream-message"))

    def read() -> list[str]:
        with requests.post(url, json={"message": "hi", "model": "llama3.2"}, headers=auth_headers(), stream=True,
                           timeout=30) as response:  # fmt: skip
            return [line for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]

    lines = await asyncio.to_thread(read)
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert "".join(e["content"] for e in chunks if e["type"] == "chunk") == "Grüße aus Köln — 東京 too 🐈"
