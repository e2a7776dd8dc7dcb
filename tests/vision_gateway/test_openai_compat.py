"""/v1/chat/completions and /v1/models through the official `openai` client, against the real stack."""

from __future__ import annotations

import base64
import io
import uuid

import asyncpg
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from cli.ollama_emulator import OllamaEmulator
from services.vision_gateway.openai_compat import handlers as openai_handlers
from tests.conftest import SERVICE_TOKEN, auth_headers
from tests.image_store.conftest import photo
from tests.vision_gateway.conftest import Stack

LLAVA_REPLY = OllamaEmulator().find("llava").reply
LLAMA_REPLY = "Hello! How can I help you today?"


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_message(text: str, url: str) -> dict[str, object]:
    return {
        "role": "user",
        "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}],
    }


async def image_rows(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT id, owner_id, message_id FROM images ORDER BY created_at")


async def test_non_streaming_text_answer_is_recorded_as_a_new_conversation(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="llama3.2",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Hello there"},
        ],
        temperature=0.2,
        top_p=0.9,
        seed=7,
        stop=["\n\n"],
        user="mallory",  # the X-User-Id header (alice) wins over the body's user field
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "llama3.2"
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == LLAMA_REPLY
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(LLAMA_REPLY.split())
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    sent = stack.emulator.chats[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Hello there"},
    ]
    assert sent["options"] == {"temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["\n\n"]}
    conversation_id = uuid.UUID(raw.headers["X-Retina-Conversation-Id"])
    assert completion.id == f"chatcmpl-{raw.headers['X-Retina-Message-Id']}"
    rows = await db.fetch(
        "SELECT m.role, m.content, m.status, c.owner_id FROM messages m"
        " JOIN conversations c ON c.id = m.conversation_id WHERE c.id = $1 ORDER BY m.created_at",
        conversation_id,
    )
    assert [tuple(r) for r in rows] == [
        ("user", "Hello there", "complete", "alice"),
        ("assistant", LLAMA_REPLY, "complete", "alice"),
    ], "only the last user turn and the answer are recorded; the client keeps the history"


async def test_streaming_a_real_photo_as_data_url(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    cat = photo("chelsea.png")
    stream = await openai_client.chat.completions.create(
        model="llava",
        messages=[image_message("What animal is this?", data_url(cat, "image/png"))],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == LLAVA_REPLY
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    usage = chunks[-1].usage
    assert usage is not None
    assert not chunks[-1].choices
    assert usage.completion_tokens == len(LLAVA_REPLY.split())
    [seen] = stack.emulator.chats[-1].images
    with Image.open(io.BytesIO(cat)) as original:
        assert seen.size == original.size, "a photo within VISION_MAX_IMAGE_EDGE keeps its size"
    assert seen.format in ("PNG", "JPEG")
    [image] = await image_rows(db)
    user_message = await db.fetchrow("SELECT id, has_images, image_ids FROM messages WHERE role = 'user'")
    assert image["owner_id"] == "alice"
    assert image["message_id"] == user_message["id"], "the uploaded image is linked to the recorded message"
    assert user_message["has_images"] is True
    assert user_message["image_ids"] == [image["id"]]


async def test_retina_image_reference_and_history_image(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    stored = await stack.upload(photo("rocket.jpg"))
    earlier = photo("astronaut.png")
    completion = await openai_client.chat.completions.create(
        model="llava",
        messages=[
            image_message("What is this?", data_url(earlier, "image/png")),
            {"role": "assistant", "content": "An astronaut."},
            image_message("And this one?", f"retina:{stored}"),
        ],
    )
    assert completion.choices[0].message.content == LLAVA_REPLY
    record = stack.emulator.chats[-1]
    assert [m.get("images") is not None for m in record.body["messages"]] == [True, False, True]
    assert len(record.images) == 2
    rows = await image_rows(db)
    assert [str(r["id"]) for r in rows] == [stored], "the history image's temporary upload was deleted"
    user_message_id = await db.fetchval("SELECT id FROM messages WHERE role = 'user'")
    assert rows[0]["message_id"] == user_message_id


async def test_user_field_names_the_user_when_no_header(stack: Stack, db: asyncpg.Connection) -> None:
    async with openai.AsyncOpenAI(
        base_url=str(stack.gateway.make_url("/v1")), api_key=SERVICE_TOKEN, max_retries=0
    ) as anonymous:
        completion = await anonymous.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "Hi"}], user="bob"
        )
        assert completion.choices[0].message.content == LLAMA_REPLY
        assert await db.fetchval("SELECT owner_id FROM conversations") == "bob"
        with pytest.raises(openai.BadRequestError) as refused:
            await anonymous.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.param == "user"
    assert "X-User-Id" in refused.value.message


async def test_max_tokens_maps_to_num_predict_and_length(stack: Stack, openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert stack.emulator.chats[-1].body["options"] == {"num_predict": 3}
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == " ".join(LLAMA_REPLY.split()[:3])


async def test_bad_token_is_an_authentication_error(stack: Stack) -> None:
    async with openai.AsyncOpenAI(
        base_url=str(stack.gateway.make_url("/v1")), api_key="wrong-token", max_retries=0
    ) as intruder:
        with pytest.raises(openai.AuthenticationError) as refused:
            await intruder.chat.completions.create(model="llava", messages=[{"role": "user", "content": "Hi"}])
        with pytest.raises(openai.AuthenticationError):
            await intruder.models.list()
    assert refused.value.status_code == 401
    body = refused.value.body
    assert isinstance(body, dict)
    assert {k: body[k] for k in ("type", "param", "code")} == {
        "type": "authentication_error",
        "param": None,
        "code": "unauthorized",
    }
    assert "service token" in body["message"]
    assert stack.emulator.chats == []


async def test_unknown_model_is_not_found_and_nothing_is_written(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        await openai_client.chat.completions.create(
            model="no-such-model",
            messages=[image_message("What is this?", data_url(photo("chelsea.png"), "image/png"))],
        )
    assert refused.value.code == "unknown_model"
    assert refused.value.param == "model"
    assert refused.value.type == "invalid_request_error"
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    assert await image_rows(db) == [], "the data: URL upload was taken back"


async def test_remote_image_url_is_refused_before_anything_happens(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.chat.completions.create(
            model="llava",
            messages=[
                image_message("first", data_url(photo("chelsea.png"), "image/png")),
                {"role": "assistant", "content": "A cat."},
                image_message("What is this?", "https://example.com/cat.jpg"),
            ],
        )
    assert refused.value.code == "bad_request"
    assert refused.value.param == "messages[2].content[1].image_url"
    assert "remote image URLs" in refused.value.message
    assert await image_rows(db) == []
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert stack.emulator.chats == []


@pytest.mark.parametrize(
    ("request_fields", "param"),
    [
        ({"messages": [{"role": "user", "content": "Hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "Hi"}], "temperature": 3}, "temperature"),
        ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "Hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "Hi", "tool_call_id": "x"}]}, "messages[0].role"),
        # found by mypy: an unhashable role was a dict-lookup TypeError (a 500), not a 400
        ({"messages": [{"role": ["user"], "content": "Hi"}]}, "messages[0].role"),
        ({"messages": [image_message("Hi", "data:image/png;base64,@@@")]}, "messages[0].content[1].image_url"),
        ({"messages": [image_message("Hi", "retina:not-a-uuid")]}, "messages[0].content[1].image_url"),
        ({"messages": [image_message("Hi", "ftp://example.com/a.png")]}, "messages[0].content[1].image_url"),
        ({"messages": []}, "messages"),
    ],
)
async def test_bad_requests_name_the_field(
    stack: Stack, openai_client: openai.AsyncOpenAI, request_fields: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.chat.completions.create(model="llava", **request_fields)
    assert refused.value.param == param
    assert refused.value.type == "invalid_request_error"
    assert stack.emulator.chats == []


async def test_someone_elses_image_reference_is_not_found(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    bobs = await stack.upload(photo("rocket.jpg"), user="bob")
    with pytest.raises(openai.NotFoundError) as refused:
        await openai_client.chat.completions.create(model="llava", messages=[image_message("What?", f"retina:{bobs}")])
    assert refused.value.code == "image_not_found"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert stack.emulator.chats == []


async def test_images_for_a_model_that_cannot_see_are_refused_and_uploads_removed(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        await openai_client.chat.completions.create(
            model="llama3.2", messages=[image_message("What?", data_url(photo("chelsea.png"), "image/png"))]
        )
    assert refused.value.code == "model_not_vision_capable"
    assert await image_rows(db) == []


async def test_failure_mid_answer_reaches_the_client_and_the_partial_answer_is_kept(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    stack.emulator.fail_after_chunks = 3
    stream = await openai_client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    received: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as failed:
        await read_all()
    assert failed.value.code == "upstream_error"
    assert "".join(received) == " ".join(LLAMA_REPLY.split()[:3])
    with pytest.raises(openai.APIStatusError) as failed_whole:
        await openai_client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
    assert failed_whole.value.status_code == 502
    assert failed_whole.value.code == "upstream_error"
    rows = await db.fetch("SELECT content, status FROM messages WHERE role = 'assistant'")
    assert len(rows) == 2
    assert {r["status"] for r in rows} == {"error"}
    assert [r["content"] for r in rows] == [" ".join(LLAMA_REPLY.split()[:3])] * 2, "the partial answers are stored"


async def test_models_list_and_retrieve(stack: Stack, openai_client: openai.AsyncOpenAI) -> None:
    page = await openai_client.models.list()
    names = [m.id for m in page.data]
    assert names == [m.name for m in stack.emulator.models]
    assert all(m.object == "model" and m.owned_by == "ollama" for m in page.data)
    one = await openai_client.models.retrieve("llava:latest")
    assert one.id == "llava:latest"
    with pytest.raises(openai.NotFoundError) as missing:
        await openai_client.models.retrieve("nope:latest")
    assert missing.value.code == "unknown_model"


async def test_oversized_and_malformed_bodies_use_openai_errors(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    headers = {**auth_headers(), "Content-Type": "application/json"}
    response = await stack.gateway.post("/v1/chat/completions", data=b"{not json", headers=headers)
    assert response.status == 400
    body = await response.json()
    assert body == {
        "error": {
            "message": "the body is not valid JSON",
            "type": "invalid_request_error",
            "param": None,
            "code": "bad_request",
        }
    }
    monkeypatch.setattr(openai_handlers, "MAX_BODY_BYTES", 1024)
    big = {"model": "llava", "messages": [image_message("Hi", data_url(photo("chelsea.png"), "image/png"))]}
    response = await stack.gateway.post("/v1/chat/completions", json=big, headers=auth_headers())
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"
    # The rest of the service keeps retina's own error shape.
    response = await stack.gateway.get("/api/models", headers={"Authorization": "Bearer wrong"})
    assert response.status == 401
    assert set((await response.json())["error"]) == {"code", "message"}


async def test_openai_calls_are_counted_like_other_streams(stack: Stack, openai_client: openai.AsyncOpenAI) -> None:
    await openai_client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
    stream = await openai_client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    assert [chunk async for chunk in stream]
    with pytest.raises(openai.NotFoundError):
        await openai_client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "Hi"}])
    response = await stack.gateway.get("/metrics")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }
    streams = ("vision_gateway_streams_total", (("model", "llama3.2"), ("outcome", "completed")))
    assert samples[streams] == 2
    assert samples[("vision_gateway_rejections_total", (("code", "unknown_model"),))] == 1
    route = ("route", "/v1/chat/completions")
    assert samples[("http_server_requests_total", (("code", "200"), ("method", "POST"), route))] == 2
    assert samples[("http_server_requests_total", (("code", "404"), ("method", "POST"), route))] == 1


async def test_unknown_v1_routes_and_methods_answer_in_openai_shape(
    stack: Stack, openai_client: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await openai_client.embeddings.create(model="nomic-embed-text", input="hello")
    assert missing.value.code == "not_found"
    assert missing.value.type == "invalid_request_error"
    response = await stack.gateway.post("/v1/models", json={}, headers=auth_headers())
    assert response.status == 405
    assert response.headers["Allow"] == "GET"
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    response = await stack.gateway.get("/v1/chat/completions", headers=auth_headers())
    assert response.status == 405
    assert response.headers["Allow"] == "POST"


async def test_an_image_without_text_is_a_question(stack: Stack, openai_client: openai.AsyncOpenAI) -> None:
    parts = [{"type": "image_url", "image_url": {"url": data_url(photo("chelsea.png"), "image/png")}}]
    completion = await openai_client.chat.completions.create(
        model="llava", messages=[{"role": "user", "content": parts}]
    )
    assert completion.choices[0].message.content == LLAVA_REPLY
    assert len(stack.emulator.chats[-1].images) == 1
    conversations = await stack.gateway.get("/api/conversations", headers=auth_headers())
    [summary] = (await conversations.json())["conversations"]
    assert summary["title"] is None
    assert summary["has_images"] is True


async def test_browsers_of_listed_origins_may_call_v1_and_read_the_retina_headers(stack: Stack) -> None:
    front_end = "http://chat.example"
    client = await stack.make_gateway(GATEWAY_CORS_ALLOWED_ORIGINS=front_end)
    preflight = await client.options(
        "/v1/chat/completions",
        headers={
            "Origin": front_end,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-user-id",
        },
    )
    assert preflight.status == 200, await preflight.text()
    assert preflight.headers["Access-Control-Allow-Origin"] == front_end
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}]}
    response = await client.post("/v1/chat/completions", json=body, headers={**auth_headers(), "Origin": front_end})
    assert response.status == 200
    exposed = response.headers["Access-Control-Expose-Headers"]
    assert "X-Retina-Stream-Id" in exposed
    assert "X-Retina-Conversation-Id" in exposed
    unknown = await client.post("/v1/embeddings", json={}, headers=auth_headers())
    assert unknown.status == 404, "the fallback route still answers once CORS wraps the others"
    assert (await unknown.json())["error"]["type"] == "invalid_request_error"


async def test_the_per_user_rate_limit_applies_here_too(stack: Stack, db: asyncpg.Connection) -> None:
    gateway = await stack.make_gateway(VISION_STREAM_RATE_PER_MINUTE="1")
    async with openai.AsyncOpenAI(
        base_url=str(gateway.make_url("/v1")),
        api_key=SERVICE_TOKEN,
        default_headers={"X-User-Id": "alice"},
        max_retries=0,
    ) as limited:
        first = await limited.chat.completions.create(model="llava", messages=[{"role": "user", "content": "hi"}])
        assert first.choices[0].message.content
        with pytest.raises(openai.RateLimitError) as refused:
            await limited.chat.completions.create(model="llava", messages=[{"role": "user", "content": "again"}])
    assert int(refused.value.response.headers["Retry-After"]) >= 1
    assert await db.fetchval("SELECT count(*) FROM conversations") == 1, "the refused call wrote nothing"


async def test_text_postgresql_cannot_store_is_a_400_not_a_500(
    stack: Stack, openai_client: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    """JSON carries NUL and lone surrogates; PostgreSQL text does not. Refused like the native endpoint."""
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "a\x00b"}])
    assert refused.value.param == "messages[0].content"
    assert "NUL" in refused.value.message
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert stack.emulator.chats == []
