"""Hostile headers, path IDs and query parameters never make the gateway answer 5xx (issue 8 item 8).

Driven by hypothesis against the gateway's real socket (with a real image-store, the Ollama
emulator and PostgreSQL behind it): every refusal is a JSON error with a stable code.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.app import REGISTRY_KEY
from services.vision_gateway.ask_form import MAX_FIELD_BYTES
from tests.conftest import SERVICE_TOKEN, auth_headers
from tests.hostile_http import assert_sane, encode, header_values, path_segments, request, short_values
from tests.image_store.conftest import photo
from tests.vision_gateway.conftest import closed_port_url, read_sse

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)
AUTH = list(auth_headers().items())


def _start_conversation(port: int) -> str:
    """One real turn, so the listing has a conversation of alice's to list."""
    body = json.dumps({"message": "hello", "model": "llama3.2"}).encode()
    answer = request(
        port,
        "POST",
        "/api/stream-message",
        [*AUTH, ("Content-Type", b"application/json"), ("Content-Length", str(len(body)).encode())],
        body=body,
    )
    assert answer.status == 200, answer.body[:300]
    start = json.loads(answer.body.split(b"\n\n")[0].removeprefix(b"data: "))
    return str(start["conversation_id"])


async def test_auth_headers_never_crash(stack: Any) -> None:
    port = stack.gateway.server.port

    @PROPERTY
    @given(
        authorization=st.one_of(st.none(), header_values, header_values.map(lambda v: f"Bearer {v!s}")),
        user=st.one_of(st.none(), header_values),
        target=st.sampled_from(
            [
                ("GET", "/api/models"),
                ("GET", "/api/conversations/00000000-0000-4000-8000-000000000000/messages"),
                ("POST", "/api/stream-message/00000000-0000-4000-8000-000000000000/stop"),
                ("POST", "/api/stream-message"),
            ]
        ),
    )
    @example(authorization="Bearer t\u00e9st", user=b"alice", target=("GET", "/api/models"))
    @example(authorization=f"Bearer {SERVICE_TOKEN}", user=b"\xff\xfe", target=("POST", "/api/stream-message"))
    @example(authorization=f"Bearer {SERVICE_TOKEN}", user="é" * 200, target=("POST", "/api/stream-message"))
    def check(authorization: Any, user: Any, target: tuple[str, str]) -> None:
        headers = [(n, v) for n, v in (("Authorization", authorization), ("X-User-Id", user)) if v is not None]
        method, path = target
        # An empty JSON object: whoever gets past authentication is refused for the body, never streams.
        body = b"{}" if path == "/api/stream-message" else None
        if body is not None:
            headers += [("Content-Type", b"application/json"), ("Content-Length", b"2")]
        answer = request(port, method, path, headers, body=body)
        assert_sane(answer, {200, 400, 401, 404}, {"bad_request", "unauthorized", "not_found"})

    await asyncio.to_thread(check)


async def test_path_ids_are_404(stack: Any) -> None:
    port = stack.gateway.server.port

    @PROPERTY
    @given(segment=path_segments, kind=st.sampled_from(["messages", "stop"]))
    @example(segment="00000000-0000-4000-8000-000000000000\n", kind="messages")
    @example(segment="00000000-0000-4000-8000-000000000000\n", kind="stop")
    def check(segment: str | bytes, kind: str) -> None:
        if kind == "messages":
            answer = request(port, "GET", f"/api/conversations/{encode(segment)}/messages", AUTH)
        else:
            answer = request(port, "POST", f"/api/stream-message/{encode(segment)}/stop", AUTH)
        assert_sane(answer, {404}, {"not_found"})

    await asyncio.to_thread(check)


# '²' and '①' pass str.isdigit() but not int(); '٣' and '５' pass both; 5,000 digits would be converted.
BAD_LIMITS = ["%C2%B2", "%E2%91%A0", "%D9%A3", "%EF%BC%95", "9" * 5000, "", "0", "101", "-1", "1.0", "+5", "%205"]


async def test_bad_conversation_limits_are_400(stack: Any) -> None:
    """The image-store's limit rule (one helper, common/http/paging.py): each bad limit is a 400
    bad_request, never a 500, and good limits still list."""
    port = stack.gateway.server.port
    conversation_id = await asyncio.to_thread(_start_conversation, port)
    for limit in BAD_LIMITS:
        answer = await asyncio.to_thread(request, port, "GET", f"/api/conversations?limit={limit}", AUTH)
        assert answer.status == 400, (limit[:20], answer.status, answer.body[:200])
        assert answer.error() == {"code": "bad_request", "message": "limit must be a whole number from 1 to 100"}
    for query in ("limit=1", "limit=100", "limit=05", ""):
        answer = await asyncio.to_thread(request, port, "GET", f"/api/conversations?{query}", AUTH)
        assert answer.status == 200, (query, answer.body[:200])
        assert [c["id"] for c in json.loads(answer.body)["conversations"]] == [conversation_id]


async def test_message_listing_parameters_never_crash(stack: Any) -> None:
    port = stack.gateway.server.port
    conversation_id = await asyncio.to_thread(_start_conversation, port)

    @PROPERTY
    @given(
        params=st.dictionaries(
            st.one_of(st.sampled_from(["limit", "before", "after", "cursor", "order"]), st.text(max_size=8)),
            short_values,
            max_size=4,
        ),
        owner=st.sampled_from(["alice", "mallory"]),
    )
    @example(params={"limit": "²"}, owner="alice")
    @example(params={"limit": "9" * 5000}, owner="alice")
    def check(params: dict[str, Any], owner: str) -> None:
        query = "&".join(f"{encode(k)}={encode(v)}" for k, v in params.items())
        path = f"/api/conversations/{conversation_id}/messages?{query}"
        answer = request(port, "GET", path, list(auth_headers(owner).items()))
        assert_sane(answer, {200, 400, 404}, {"bad_request", "not_found"})
        if owner == "mallory":
            assert answer.status == 404, "another user's conversation looks missing"

    await asyncio.to_thread(check)


async def test_a_quoted_file_name_with_separators_reaches_the_store(stack: Any, db: Any) -> None:
    """The legal `filename="a;b=c; x.png"` is forwarded, not refused as a nameless part."""
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("message", "Describe this")
    form.add_field("model", "llava")
    form.add_field("images", io.BytesIO(photo("rocket.jpg")), filename="a;b=c; x.png", content_type="image/jpeg")
    response = await stack.gateway.post("/api/stream-message", data=form, headers=auth_headers())
    result = await read_sse(response)
    assert result.status == 200, result.events
    [image_id] = result.events[0]["image_ids"]
    stored = await db.fetchval("SELECT original_filename FROM images WHERE id = $1", uuid.UUID(image_id))
    assert stored == "a;b=c; x.png"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("message", b"x" * (MAX_FIELD_BYTES + 1), f"field 'message' is longer than {MAX_FIELD_BYTES} bytes"),
        ("model", b"llava\xff", "field 'model' is not UTF-8 text"),
    ],
)
async def test_an_oversized_or_undecodable_form_field_is_refused_after_undoing_uploads(
    stack: Any, db: Any, field: str, value: bytes, message: str
) -> None:
    """An image part comes first and is forwarded to the store; the bad text field after it is a 400
    and the upload is undone, so neither service keeps anything of the request."""
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("images", io.BytesIO(photo("rocket.jpg")), filename="rocket.jpg", content_type="image/jpeg")
    fields = {"message": b"Describe this", "model": b"llava", field: value}
    for name, raw in fields.items():
        form.add_field(name, io.BytesIO(raw), content_type="text/plain")
    response = await stack.gateway.post("/api/stream-message", data=form, headers=auth_headers())
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    assert (error["code"], error["message"]) == ("bad_request", message)
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT count(*) FROM images") == 0, "the forwarded image was deleted again"
    assert stack.emulator.chats == []


async def test_an_image_part_beyond_the_limit_is_refused_before_it_is_forwarded(stack: Any, db: Any) -> None:
    """The second image part of a one-image gateway: 400 too_many_images, the first upload undone, and
    the second never sent to the image-store (refused on its headers, not after its bytes moved)."""
    gateway = await stack.make_gateway(VISION_MAX_IMAGES_PER_MESSAGE="1")
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("message", "Compare these")
    form.add_field("model", "llava")
    for name in ("rocket.jpg", "chelsea.png"):
        form.add_field("images", io.BytesIO(photo(name)), filename=name, content_type="application/octet-stream")
    response = await gateway.post("/api/stream-message", data=form, headers=auth_headers())
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["code"] == "too_many_images"
    registry = gateway.app[REGISTRY_KEY]
    stored = registry.get_sample_value(
        "vision_gateway_upstream_requests_total", {"target": "image_store", "code": "201"}
    )
    assert stored == 1.0, "only the first image reached the store"
    assert await db.fetchval("SELECT count(*) FROM images") == 0, "and it was deleted again"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"model": "llava", "think": "high"}, 422, "model_cannot_think"),
        ({"model": "llama3.2"}, 422, "model_not_vision_capable"),
        ({"model": "no-such-model"}, 404, "unknown_model"),
        ({"model": "llava", "format": "xml"}, 400, "bad_request"),
        ({"model": "llava", "options": '{"num_gpu": 1}'}, 400, "bad_request"),
        ({"model": "llava", "keep_alive": "-1m"}, 400, "bad_request"),  # under the cap set below
        ({"model": "lla\x00va"}, 400, "bad_request"),  # a name PostgreSQL could not store, never sent to Ollama
    ],
)
async def test_text_fields_sent_before_the_images_are_judged_before_any_image_moves(
    stack: Any, db: Any, fields: dict[str, str], status: int, code: str
) -> None:
    """A form that puts its text first (as retina ask does) is refused without one upload: the store
    never sees the image, so the user's upload rate is not spent on a request that cannot run."""
    gateway = await stack.make_gateway(VISION_MAX_KEEP_ALIVE_SECONDS="600")
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("message", "What is this?")
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("images", io.BytesIO(photo("rocket.jpg")), filename="rocket.jpg", content_type="image/jpeg")
    response = await gateway.post("/api/stream-message", data=form, headers=auth_headers())
    assert response.status == status, await response.text()
    assert (await response.json())["error"]["code"] == code
    registry = gateway.app[REGISTRY_KEY]
    sent = registry.get_sample_value("vision_gateway_upstream_requests_total", {"target": "image_store", "code": "201"})
    assert (sent or 0.0) == 0.0, "no image reached the store"
    assert await db.fetchval("SELECT count(*) FROM images") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_ollama_down_refuses_a_form_before_its_image_is_uploaded(stack: Any, db: Any) -> None:
    """Nothing listens where Ollama should be: the model lookup made for the form's first image fails
    (503 upstream_unavailable after retries), and the image never reaches the store."""
    gateway = await stack.make_gateway(OLLAMA_URL=closed_port_url(), UPSTREAM_RETRIES="1")
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("message", "What is this?")
    form.add_field("model", "llava")
    form.add_field("images", io.BytesIO(photo("rocket.jpg")), filename="rocket.jpg", content_type="image/jpeg")
    response = await gateway.post("/api/stream-message", data=form, headers=auth_headers())
    assert response.status == 503, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "upstream_unavailable"
    assert error["message"].startswith("Ollama is unavailable")
    registry = gateway.app[REGISTRY_KEY]
    sent = registry.get_sample_value("vision_gateway_upstream_requests_total", {"target": "image_store", "code": "201"})
    assert (sent or 0.0) == 0.0, "no image reached the store"
    assert await db.fetchval("SELECT count(*) FROM images") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
