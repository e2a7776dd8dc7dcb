"""Bad input and faults: every refusal is a clear JSON error with nothing written or sent to Ollama."""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.vision_gateway.app import CHAT_SERVICE_KEY
from tests.conftest import SERVICE_TOKEN, auth_headers
from tests.plain_errors import assert_plain
from tests.vision_gateway.conftest import Stack, ask, assert_turn_abandoned, big_photo, closed_port_url, read_sse


async def expect_refusal(
    response: aiohttp.ClientResponse, status: int, code: str, stack: Stack, db: asyncpg.Connection, part: str = ""
) -> None:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["error"]["code"] == code, body
    assert part in body["error"]["message"], body
    assert await db.fetchval("SELECT count(*) FROM messages") == 0, "no half-written rows"
    assert stack.emulator.chats == [], "nothing reached Ollama"


@pytest.mark.parametrize(
    ("body", "part"),
    [
        ({"model": "llava"}, "message is required"),
        ({"message": "   ", "model": "llava"}, "message is required"),
        ({"message": "hi"}, "model is required"),
        ({"message": 5, "model": "llava"}, "message is required"),
        ({"message": "hi", "model": ["llava"]}, "model is required"),
        ({"message": "hi", "model": "llava", "image_ids": "abc"}, "image_ids must be a list"),
        ({"message": "hi", "model": "llava", "image_ids": [5]}, "must be a UUID"),
        ({"message": "hi", "model": "llava", "image_ids": ["https://evil.example/cat.png"]}, "not URLs"),
        ({"message": "hi", "model": "llava", "image_ids": ["data:image/png;base64,AAAA"]}, "not URLs"),
        ({"message": "hi", "model": "llava", "conversation_id": "x"}, "conversation_id must be a UUID"),
        ({"message": "hi", "model": "llava", "options": [1]}, "options must be a JSON object"),
        ({"message": "x" * 40_000, "model": "llava"}, "longer than"),
    ],
)
async def test_bad_fields(stack: Stack, db: asyncpg.Connection, body: dict[str, Any], part: str) -> None:
    await expect_refusal(await ask(stack.gateway, body), 400, "bad_request", stack, db, part)


async def test_malformed_json_and_wrong_content_type(stack: Stack, db: asyncpg.Connection) -> None:
    bad = await stack.gateway.post(
        "/api/stream-message", data=b"{not json", headers={**auth_headers(), "Content-Type": "application/json"}
    )
    await expect_refusal(bad, 400, "bad_request", stack, db, "not valid JSON")
    array = await stack.gateway.post("/api/stream-message", json=[1, 2], headers=auth_headers())
    await expect_refusal(array, 400, "bad_request", stack, db, "JSON object")
    text = await stack.gateway.post(
        "/api/stream-message", data=b"hi", headers={**auth_headers(), "Content-Type": "text/plain"}
    )
    await expect_refusal(text, 415, "unsupported_media_type", stack, db)


async def test_unauthorised(stack: Stack, db: asyncpg.Connection) -> None:
    body = {"message": "hi", "model": "llava"}
    none = await stack.gateway.post("/api/stream-message", json=body)
    await expect_refusal(none, 401, "unauthorized", stack, db)
    wrong = await stack.gateway.post(
        "/api/stream-message", json=body, headers={"Authorization": "Bearer not-the-token-at-all", "X-User-Id": "a"}
    )
    await expect_refusal(wrong, 401, "unauthorized", stack, db)
    nouser = await stack.gateway.post(
        "/api/stream-message", json=body, headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}
    )
    await expect_refusal(nouser, 400, "bad_request", stack, db, "X-User-Id")


async def test_unknown_model(stack: Stack, db: asyncpg.Connection) -> None:
    response = await ask(stack.gateway, {"message": "hi", "model": "no-such-model"})
    await expect_refusal(response, 404, "unknown_model", stack, db, "no-such-model")


async def test_too_many_images(stack: Stack, db: asyncpg.Connection) -> None:
    ids = [str(uuid.uuid4()) for _ in range(5)]
    response = await ask(stack.gateway, {"message": "hi", "model": "llava", "image_ids": ids})
    await expect_refusal(response, 400, "too_many_images", stack, db, "at most 4")


async def test_foreign_and_missing_image_ids(stack: Stack, db: asyncpg.Connection) -> None:
    bobs = await stack.upload(big_photo(300, 200), user="bob")
    db_images_before = await db.fetchval("SELECT count(*) FROM images")
    for image_id in (bobs, str(uuid.uuid4())):
        response = await ask(stack.gateway, {"message": "what?", "model": "llava", "image_ids": [image_id]})
        await expect_refusal(response, 404, "image_not_found", stack, db, image_id)
    assert await db.fetchval("SELECT count(*) FROM images") == db_images_before
    assert await db.fetchval("SELECT message_id FROM images WHERE id = $1", uuid.UUID(bobs)) is None


async def test_images_for_a_model_that_cannot_see(stack: Stack, db: asyncpg.Connection) -> None:
    image_id = await stack.upload(big_photo(300, 200))
    response = await ask(stack.gateway, {"message": "what?", "model": "llama3.2", "image_ids": [image_id]})
    await expect_refusal(response, 422, "model_not_vision_capable", stack, db, "cannot see")


async def test_multipart_with_a_non_image_file(stack: Stack, db: asyncpg.Connection) -> None:
    form = aiohttp.FormData()
    form.add_field("message", "read this")
    form.add_field("model", "llava")
    form.add_field("images", io.BytesIO(b"#!/bin/sh\necho pwned\n"), filename="cat.jpg", content_type="image/jpeg")
    response = await stack.gateway.post("/api/stream-message", data=form, headers=auth_headers())
    await expect_refusal(response, 415, "unsupported_media_type", stack, db)
    assert await db.fetchval("SELECT count(*) FROM images") == 0


async def test_multipart_refused_later_keeps_no_uploads(stack: Stack, db: asyncpg.Connection) -> None:
    form = aiohttp.FormData()
    form.add_field("message", "what?")
    form.add_field("model", "no-such-model")
    form.add_field("images", io.BytesIO(big_photo(300, 200)), filename="cat.jpg", content_type="image/jpeg")
    response = await stack.gateway.post("/api/stream-message", data=form, headers=auth_headers())
    await expect_refusal(response, 404, "unknown_model", stack, db)
    assert await db.fetchval("SELECT count(*) FROM images") == 0, "the forwarded upload was removed again"


async def test_multipart_upload_disabled(stack: Stack, db: asyncpg.Connection) -> None:
    gateway = await stack.make_gateway(IMAGE_UPLOAD_ENABLED="false")
    form = aiohttp.FormData()
    form.add_field("message", "what?")
    form.add_field("model", "llava")
    form.add_field("images", io.BytesIO(big_photo(300, 200)), filename="cat.jpg", content_type="image/jpeg")
    response = await gateway.post("/api/stream-message", data=form, headers=auth_headers())
    await expect_refusal(response, 503, "upload_disabled", stack, db)


async def test_image_store_down_is_retried_then_503(stack: Stack, db: asyncpg.Connection) -> None:
    gateway = await stack.make_gateway(IMAGE_STORE_URL=closed_port_url())
    response = await ask(gateway, {"message": "what?", "model": "llava", "image_ids": [str(uuid.uuid4())]})
    await expect_refusal(response, 503, "upstream_unavailable", stack, db, "image-store")
    assert_plain((await response.json())["error"]["message"])
    metrics = await (await gateway.get("/metrics")).text()
    assert 'vision_gateway_upstream_retries_total{target="image_store"} 2.0' in metrics


async def test_ollama_down_is_503_with_retry_after(stack: Stack, db: asyncpg.Connection) -> None:
    """Nothing listens at OLLAMA_URL: the backend is marked down (connect refused) for its cooldown,
    and asks meanwhile are 503 upstream_unavailable with the cooldown's end as Retry-After."""
    url = closed_port_url()
    gateway = await stack.make_gateway(OLLAMA_URL=url, OLLAMA_BACKEND_COOLDOWN_SECONDS="20")
    response = await ask(gateway, {"message": "hi", "model": "llava"})
    assert response.status == 503
    body = await response.json()
    assert body["error"]["code"] == "upstream_unavailable"
    assert body["error"]["message"] == "Ollama is unavailable: could not connect"
    assert_plain(body["error"]["message"])
    assert 15 <= int(response.headers["Retry-After"]) <= 20
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    metrics = await (await gateway.get("/metrics")).text()
    backend = url.removeprefix("http://")
    assert f'vision_gateway_backend_up{{backend="{backend}"}} 0.0' in metrics


async def test_ollama_503_before_first_byte_is_retried(stack: Stack) -> None:
    stack.emulator.status_sequence = [503, 503]
    result = await read_sse(await ask(stack.gateway, {"message": "hi", "model": "llava"}))
    assert result.status == 200
    assert result.events[-1]["type"] == "done"
    assert len(stack.emulator.chats) == 3


async def test_error_line_mid_stream_keeps_the_partial_answer(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.fail_after_chunks = 4
    result = await read_sse(await ask(stack.gateway, {"message": "hi", "model": "llava"}))
    assert result.status == 200
    [error] = result.of("error")
    assert error == {
        "type": "error",
        "code": "upstream_error",
        "message": "an error was encountered while running the model: unexpected EOF",
        "partial": True,
        "saved": True,
    }
    assert len(result.of("chunk")) == 4
    assert result.of("done") == []
    row = await db.fetchrow("SELECT content, status, error FROM messages WHERE role = 'assistant'")
    assert row["content"] == result.text
    assert row["status"] == "error"
    assert "unexpected EOF" in row["error"]
    assert len(stack.emulator.chats) == 1, "nothing is retried after output started"


async def test_legacy_http_200_error_before_first_token(
    aiohttp_server: Any, stack: Stack, db: asyncpg.Connection
) -> None:
    stack.emulator.version_profile = "legacy"
    stack.emulator.fail_before_first_token = "llama runner process has terminated: signal: killed"
    response = await ask(stack.gateway, {"message": "hi", "model": "llava"})
    assert response.status == 502
    body = await response.json()
    assert body["error"]["code"] == "upstream_error"
    assert "llama runner process has terminated" in body["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_legacy_error_after_a_slow_load_arrives_as_an_sse_error(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.version_profile = "legacy"
    stack.emulator.first_token_delay = 1.3
    stack.emulator.fail_before_first_token = "model requires more system memory"
    result = await read_sse(await ask(stack.gateway, {"message": "hi", "model": "llava"}))
    assert result.status == 200
    assert result.events[0]["type"] == "start"
    [error] = result.of("error")
    assert error["partial"] is False
    assert "more system memory" in error["message"]
    assert await db.fetchval("SELECT status FROM messages WHERE role = 'assistant'") == "error"


async def test_client_disconnect_cancels_upstream_and_stores_stopped(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.chunk_delay = 0.2
    response = await ask(stack.gateway, {"message": "hi", "model": "llava"})
    first = await response.content.readline()
    assert first.startswith(b"data: ")
    await response.content.readline()
    await response.content.readline()  # the first chunk
    response.close()
    record = await stack.emulator.wait_for_disconnect(within=5)
    assert not record.completed
    for _ in range(50):
        status = await db.fetchval("SELECT status FROM messages WHERE role = 'assistant'")
        if status != "streaming":
            break
        await asyncio.sleep(0.05)
    row = await db.fetchrow("SELECT status, error, content FROM messages WHERE role = 'assistant'")
    assert row["status"] == "stopped"
    assert row["error"] == "client disconnected"
    metrics = await (await stack.gateway.get("/metrics")).text()
    assert 'vision_gateway_streams_total{model="llava",outcome="client_disconnected"} 1.0' in metrics


@pytest.mark.postgres_paths
@pytest.mark.pgbouncer
async def test_stop_from_another_gateway_replica(stack: Stack, db: asyncpg.Connection) -> None:
    other_replica = await stack.make_gateway()
    stack.emulator.chunk_delay = 0.15
    response = await ask(stack.gateway, {"message": "hi", "model": "llava"})
    start_line = await response.content.readline()
    import json

    start = json.loads(start_line[len(b"data: ") :])
    await response.content.readline()
    foreign = await other_replica.post(f"/api/stream-message/{start['stream_id']}/stop", headers=auth_headers("bob"))
    assert foreign.status == 404
    stop = await other_replica.post(f"/api/stream-message/{start['stream_id']}/stop", headers=auth_headers())
    assert stop.status == 200
    assert await stop.json() == {"stream_id": start["stream_id"], "stopped": True}
    rest = await read_sse(response)
    done = rest.events[-1]
    assert done["type"] == "done"
    assert done["done_reason"] == "stopped"
    await stack.emulator.wait_for_disconnect(within=5)
    row = await db.fetchrow("SELECT status, content FROM messages WHERE role = 'assistant'")
    assert row["status"] == "stopped"
    assert row["content"] == rest.text, "the partial answer is kept"
    again = await other_replica.post(f"/api/stream-message/{start['stream_id']}/stop", headers=auth_headers())
    assert again.status == 200, "stop is idempotent: a finished stream reports how it ended"
    assert await again.json() == {"stream_id": start["stream_id"], "stopped": False, "status": "stopped"}
    foreign_again = await other_replica.post(
        f"/api/stream-message/{start['stream_id']}/stop", headers=auth_headers("bob")
    )
    assert foreign_again.status == 404, "someone else's finished stream stays invisible"


async def test_a_stop_while_the_model_loads_ends_the_stream_at_once(stack: Stack, db: asyncpg.Connection) -> None:
    """No watcher task waits for the stop: the stop itself wakes the relay, before Ollama's first line."""
    import json

    stack.emulator.first_token_delay = 5.0
    response = await ask(stack.gateway, {"message": "hi", "model": "llava"})
    start = json.loads((await response.content.readline())[len(b"data: ") :])
    assert await response.content.readline() == b"\n"
    asked_at = asyncio.get_running_loop().time()
    stop = await stack.gateway.post(f"/api/stream-message/{start['stream_id']}/stop", headers=auth_headers())
    assert await stop.json() == {"stream_id": start["stream_id"], "stopped": True}
    rest = await read_sse(response)
    assert asyncio.get_running_loop().time() - asked_at < 2.0, "ended well before the model's first token"
    assert (rest.events[-1]["type"], rest.events[-1]["done_reason"]) == ("done", "stopped")
    assert await db.fetchval("SELECT status FROM messages WHERE role = 'assistant'") == "stopped"
    await stack.emulator.wait_for_disconnect(within=5)


async def test_stop_unknown_or_malformed_stream(stack: Stack) -> None:
    for stream_id in (str(uuid.uuid4()), "not-a-uuid"):
        response = await stack.gateway.post(f"/api/stream-message/{stream_id}/stop", headers=auth_headers())
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"


async def test_shutdown_ends_open_streams_with_a_final_event(stack: Stack, db: asyncpg.Connection) -> None:
    stack.emulator.chunk_delay = 0.2
    response = await ask(stack.gateway, {"message": "hi", "model": "llava"})
    for _ in range(4):  # the start event and the first chunk, each a line and a blank line
        await response.content.readline()
    app = stack.gateway.app
    assert app is not None
    app[CHAT_SERVICE_KEY].registry.stop_all("shutdown")
    rest = await read_sse(response)
    final = rest.events[-1]
    assert final["type"] == "error"
    assert final["code"] == "shutting_down"
    row = await db.fetchrow("SELECT status, error FROM messages WHERE role = 'assistant'")
    assert (row["status"], row["error"]) == ("stopped", "server shutting down")
    await stack.emulator.wait_for_disconnect(within=5)


async def test_text_only_fallback_still_refuses_foreign_images(stack: Stack, db: asyncpg.Connection) -> None:
    gateway = await stack.make_gateway(VISION_FALLBACK_POLICY="text_only")
    bobs = await stack.upload(big_photo(300, 200), user="bob")
    response = await ask(gateway, {"message": "what?", "model": "llama3.2", "image_ids": [bobs]})
    await expect_refusal(response, 404, "image_not_found", stack, db, bobs)
    mine = await stack.upload(big_photo(300, 200))
    result = await read_sse(await ask(gateway, {"message": "what?", "model": "llama3.2", "image_ids": [mine]}))
    assert result.of("notice")[0]["code"] == "images_ignored"
    metrics = await (await gateway.get("/metrics")).text()
    assert 'vision_gateway_upstream_requests_total{code="304",target="image_store"} 1.0' in metrics


async def test_client_gone_before_the_stream_starts_is_recorded_as_stopped(
    stack: Stack, db: asyncpg.Connection
) -> None:
    """abandon() is what the handler calls when writing the SSE headers fails."""
    service = stack.gateway.app[CHAT_SERVICE_KEY]
    stack.emulator.first_token_delay = 2.0
    from services.vision_gateway.chat import Caller, parse_chat_request

    prepared = await service.prepare(parse_chat_request({"message": "hi", "model": "llava"}), Caller("alice"))
    turn = await service.begin(prepared, grace_seconds=0.05)
    assert await db.fetchval("SELECT status FROM messages WHERE role = 'assistant'") == "streaming"
    await service.abandon(turn)
    row = await db.fetchrow("SELECT status, error FROM messages WHERE role = 'assistant'")
    assert (row["status"], row["error"]) == ("stopped", "client disconnected")
    await stack.emulator.wait_for_disconnect(within=5)


async def test_a_handler_cancelled_between_begin_and_relay_closes_the_turn(
    stack: Stack, db: asyncpg.Connection
) -> None:
    """The client leaves (aiohttp cancels the handler) after the turn was begun but before its relay
    started: while its images are linked, or while /v1 deletes the copies of its history images.
    The turn is abandoned as the handler's own abandon() would: Ollama's request closed, the
    backend's in-flight count back to 0, the row stopped rather than left `streaming`."""
    from services.vision_gateway.chat import parse_chat_request

    service = stack.gateway.app[CHAT_SERVICE_KEY]
    for model in stack.emulator.models:
        model.reply = " ".join(f"word{i}" for i in range(400))
    stack.emulator.chunk_delay = 0.05
    begun = asyncio.Event()

    async def handler() -> None:
        async with service.admit("alice", "") as asking:
            await asking.begin(parse_chat_request({"message": "hi", "model": "llava"}), grace_seconds=5)
            begun.set()
            await asyncio.sleep(30)  # a step after begin() (linking, deleting copies) when the client leaves

    task = asyncio.create_task(handler())
    await asyncio.wait_for(begun.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_turn_abandoned(stack, db)
