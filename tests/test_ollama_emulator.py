"""Fidelity tests for the Ollama emulator.

Why: the gateway tests trust the emulator to behave like Ollama. Driving it with the official `ollama` Python
client proves that real Ollama users' code accepts what it sends; raw aiohttp requests pin down the wire
details (headers, NDJSON framing, Go's JSON) that a client library would hide.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import ollama
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cli.ollama_emulator import (
    BUSY_MESSAGE,
    CANNED_NOTICE,
    MISSING_VISION_DATA,
    UNKNOWN_IMAGE_FORMAT,
    EmulatedModel,
    GoBase64Error,
    OllamaEmulator,
    _go_decode_quantums,
    go_base64_decode,
    showcase_models,
)
from tests.conftest import ROOT

CREATED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z")
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
HI = [{"role": "user", "content": "hi"}]

Serve = Callable[[OllamaEmulator], Awaitable[str]]


def picture(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    """A real, small image made in memory."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def emulator() -> OllamaEmulator:
    return OllamaEmulator()


@pytest.fixture
async def serve(aiohttp_server: Any) -> Serve:
    """Start an emulator on a real port and return its base URL."""

    async def start(emulator: OllamaEmulator) -> str:
        server = await aiohttp_server(emulator.make_app())
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
async def base_url(serve: Serve, emulator: OllamaEmulator) -> str:
    return await serve(emulator)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[str], ollama.AsyncClient]]:
    """Official clients, closed afterwards (httpx warns about open sockets, and warnings are errors here)."""
    made: list[ollama.AsyncClient] = []

    def make(host: str) -> ollama.AsyncClient:
        made.append(ollama.AsyncClient(host=host))
        return made[-1]

    yield make
    for client in made:
        await client.close()


@pytest.fixture
def client(connect: Callable[[str], ollama.AsyncClient], base_url: str) -> ollama.AsyncClient:
    return connect(base_url)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def collect(stream: AsyncIterator[ollama.ChatResponse]) -> list[ollama.ChatResponse]:
    return [part async for part in stream]


async def consume(stream: AsyncIterator[ollama.ChatResponse], into: list[str]) -> None:
    """Read a stream, keeping what arrived before it failed."""
    async for part in stream:
        into.append(part.message.content)


# ---- the official client -------------------------------------------------------------------------


async def test_streaming_chat_delivers_the_reply_and_the_images(
    client: ollama.AsyncClient, emulator: OllamaEmulator
) -> None:
    jpeg, png = picture("JPEG"), picture("PNG", (20, 10))
    messages = [{"role": "user", "content": "What is in these pictures?", "images": [jpeg, png]}]
    parts = await collect(await client.chat(model="llava", messages=messages, stream=True))
    reply = emulator.find("llava").reply
    assert "".join(p.message.content for p in parts) == reply
    assert len(parts) > 3, "the reply arrives in several chunks"
    assert all(not p.done for p in parts[:-1])
    last = parts[-1]
    assert (last.done, last.done_reason, last.model) == (True, "stop", "llava")
    for metric in METRICS:
        assert isinstance(last[metric], int), metric
    assert last.eval_count == len(parts) - 1, "one token per content chunk"
    assert last.prompt_eval_count == 5 + 2 * 768, "words plus 768 per image"
    record = emulator.chats[-1]
    assert record.completed
    assert not record.cancelled
    assert [(i.format, i.size, i.message_index) for i in record.images] == [
        ("JPEG", (64, 48), 0),
        ("PNG", (20, 10), 0),
    ]
    assert [i.decoded_bytes for i in record.images] == [len(jpeg), len(png)]
    assert record.images[0].sha256 == hashlib.sha256(jpeg).hexdigest()
    assert record.body["messages"][0]["images"][0] == base64.b64encode(jpeg).decode()
    assert record.headers["User-Agent"].startswith("ollama-python/")


async def test_non_streaming_chat_concatenates(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    response = await client.chat(model="llama3.2", messages=HI)  # the client's default is stream=False
    assert response.message.content == emulator.find("llama3.2").reply
    assert response.done
    assert response.done_reason == "stop"
    assert response.eval_count == len(response.message.content.split())
    record = emulator.chats[-1]
    assert record.body["stream"] is False
    assert not record.streamed
    assert record.completed


@pytest.mark.parametrize(
    ("style", "signal"),
    [
        ("projector", "clip"),
        ("families_mllama", "mllama"),
        ("vision_block_count", "block_count"),
        ("none", None),
    ],
)
async def test_show_without_capabilities_exposes_the_old_vision_signals(
    serve: Serve, connect: Callable[[str], ollama.AsyncClient], http: aiohttp.ClientSession, style: str, signal: Any
) -> None:
    base = await serve(OllamaEmulator([EmulatedModel("old:7b", vision=True, capability_style=style)]))
    shown = await connect(base).show("OLD:7b")
    assert shown.capabilities is None, "servers before 0.6.4 send no capabilities"
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"]
    families = (shown.details.families or []) if shown.details else []
    async with http.post(f"{base}/api/show", json={"name": "old:7b"}) as response:  # the legacy request field
        raw = await response.json()
    assert ("clip" in families) is (signal == "clip")
    assert ("projector_info" in raw) is (signal == "clip")
    assert ("mllama" in families) is (signal == "mllama")
    block_counts = [k for k in shown.modelinfo if k.endswith(".vision.block_count")]
    assert bool(block_counts) is (signal == "block_count")


async def test_show_modern_capabilities_and_errors(
    client: ollama.AsyncClient, base_url: str, http: aiohttp.ClientSession, emulator: OllamaEmulator
) -> None:
    llava = await client.show("llava")
    assert set(llava.capabilities or []) == {"completion", "vision"}
    assert llava.modelinfo is not None
    assert llava.modified_at is not None
    assert "vision" not in ((await client.show("llama3.2")).capabilities or [])
    assert (await client.show("nomic-embed-text")).capabilities == ["embedding"]
    with pytest.raises(ollama.ResponseError) as caught:
        await client.show("nope")
    assert (caught.value.status_code, caught.value.error) == (404, "model 'nope' not found")
    for body, message in ((b"", "missing request body"), (b"{}", "model is required")):
        async with http.post(f"{base_url}/api/show", data=body) as response:
            assert (response.status, await response.json()) == (400, {"error": message})
    assert emulator.show_calls == 6
    assert emulator.shown[:2] == ["llava", "llama3.2"]


async def test_list_and_ps(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    listed = (await client.list()).models
    assert [m.model for m in listed] == [  # most recently modified first
        "llava:latest",
        "llama3.2:latest",
        "gemma3:latest",
        "nomic-embed-text:latest",
        "qwen3:latest",
    ]
    assert all(re.fullmatch(r"[0-9a-f]{64}", m.digest or "") for m in listed), "bare hex digests"
    assert listed[0].details is not None
    assert listed[0].details.families == ["llama", "clip"]
    assert emulator.tags_calls == 1
    assert (await client.ps()).models == [], "nothing is loaded yet"
    await client.chat(model="llava", messages=HI)
    [running] = (await client.ps()).models
    assert running.model == "llava:latest"
    assert running.expires_at is not None
    assert running.expires_at > datetime.now(UTC)
    assert running.context_length == 4096
    await client.chat(model="llava", messages=[], keep_alive=0)  # the documented way to unload
    assert (await client.ps()).models == []


@pytest.mark.parametrize(
    ("profile", "message"),
    [("modern", "model 'Nope' not found"), ("legacy", 'model "Nope" not found, try pulling it first')],
)
async def test_unknown_model_message_per_version(
    serve: Serve, connect: Callable[[str], ollama.AsyncClient], profile: str, message: str
) -> None:
    client = connect(await serve(OllamaEmulator(version_profile=profile)))
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="Nope", messages=HI)
    assert (caught.value.status_code, caught.value.error) == (404, message)
    with pytest.raises(ollama.ResponseError) as streamed:
        await collect(await client.chat(model="Nope", messages=HI, stream=True))
    assert streamed.value.status_code == 404


async def test_names_match_loosely_but_are_echoed_as_sent(client: ollama.AsyncClient) -> None:
    response = await client.chat(model="LLaVA:Latest", messages=HI)
    assert response.model == "LLaVA:Latest"


async def test_error_line_mid_stream(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    emulator.fail_after_chunks = 3
    received: list[str] = []
    with pytest.raises(ollama.ResponseError) as caught:
        await consume(await client.chat(model="llava", messages=HI, stream=True), received)
    assert len(received) == 3, "the chunks before the error arrived"
    assert caught.value.status_code == -1, "raised from the stream, after HTTP 200"
    assert caught.value.error == "an error was encountered while running the model: unexpected EOF"
    record = emulator.chats[-1]
    assert record.error == caught.value.error
    assert not record.completed
    assert "done" not in record.lines[-1]


@pytest.mark.parametrize(("profile", "status"), [("modern", 500), ("legacy", -1)])
async def test_runner_error_before_the_first_token(
    serve: Serve, connect: Callable[[str], ollama.AsyncClient], profile: str, status: int
) -> None:
    emulator = OllamaEmulator(version_profile=profile, fail_before_first_token="llama runner process has terminated")
    client = connect(await serve(emulator))
    with pytest.raises(ollama.ResponseError) as caught:
        await collect(await client.chat(model="llava", messages=HI, stream=True))
    assert caught.value.status_code == status
    assert caught.value.error.startswith("llama runner process has terminated")
    assert emulator.chats[-1].status == (500 if profile == "modern" else 200)
    with pytest.raises(ollama.ResponseError) as unstreamed:
        await client.chat(model="llava", messages=HI)
    assert unstreamed.value.status_code == 500, "stream: false always answered 500"


async def test_slow_load_is_reported_as_load_duration(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    emulator.first_token_delay = 0.3
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.chat(model="llava", messages=HI)
    assert loop.time() - started >= 0.3
    assert response.load_duration is not None
    assert response.load_duration >= 300_000_000
    assert response.total_duration is not None
    assert response.total_duration >= response.load_duration


async def test_busy_scheduler_then_success(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    emulator.status_sequence = [503, 503]
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as caught:
            await collect(await client.chat(model="llava", messages=HI, stream=True))
        assert (caught.value.status_code, caught.value.error) == (503, BUSY_MESSAGE)
    assert (await client.chat(model="llava", messages=HI)).done
    assert [r.status for r in emulator.chats] == [503, 503, 200]


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"model": "llava", "think": True}, 400, '"llava" does not support thinking'),
        ({"model": "nomic-embed-text"}, 400, '"nomic-embed-text" does not support chat'),
        (
            {"model": "llava", "tools": [{"type": "function", "function": {"name": "f"}}]},
            400,
            "registry.ollama.ai/library/llava:latest does not support tools",
        ),
        ({"model": "llava", "keep_alive": "abc"}, 400, 'time: invalid duration "abc"'),
    ],
)
async def test_refusals(client: ollama.AsyncClient, kwargs: dict[str, Any], status: int, message: str) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(messages=HI, **kwargs)
    assert (caught.value.status_code, caught.value.error) == (status, message)


async def test_empty_messages_only_load_the_model(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    response = await client.chat(model="llava", messages=[])
    assert (response.done, response.done_reason, response.message.content) == (True, "load", "")
    assert response.eval_count is None, "no metrics on the load answer"


async def test_thinking_model_streams_its_thoughts_first(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    model = emulator.add_model(EmulatedModel("qwen3:8b", thinking=True, reply="Four."))
    parts = await collect(await client.chat(model="qwen3:8b", messages=HI, stream=True, think=True))
    thinking = "".join(p.message.thinking or "" for p in parts)
    assert thinking == model.thinking_reply
    assert "".join(p.message.content for p in parts) == "Four."
    first_content = next(i for i, p in enumerate(parts) if p.message.content)
    assert all(p.message.thinking for p in parts[:first_content])
    quiet = await client.chat(model="qwen3:8b", messages=HI, think=False)
    assert quiet.message.thinking is None
    assert quiet.message.content == "Four."


async def test_the_catalogues_thinking_model_thinks_unless_told_not_to(
    client: ollama.AsyncClient, emulator: OllamaEmulator
) -> None:
    """Ollama >= 0.12.4: with `think` unset a thinking-capable model thinks; a level counts as true."""
    model = emulator.find("qwen3")
    assert "thinking" in ((await client.show("qwen3")).capabilities or [])
    for think in (None, "high"):
        parts = await collect(await client.chat(model="qwen3", messages=HI, stream=True, think=think))
        assert "".join(p.message.thinking or "" for p in parts) == model.thinking_reply
        assert "".join(p.message.content for p in parts) == model.reply
    assert "think" not in emulator.chats[0].body
    assert emulator.chats[1].body["think"] == "high"


async def test_done_reason_length(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    limited = await client.chat(model="llava", messages=HI, options={"num_predict": 2})
    assert (limited.done_reason, limited.eval_count) == ("length", 2)
    assert limited.message.content == "".join(re.findall(r"\s*\S+", emulator.find("llava").reply)[:2])
    emulator.done_reason = "length"
    assert (await client.chat(model="llava", messages=HI)).done_reason == "length"


async def test_images_sent_to_a_text_model(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    ask = [{"role": "user", "content": "What is this?", "images": [picture("PNG")]}]
    ignored = await client.chat(model="llama3.2", messages=ask)
    assert "[img-0]" in ignored.message.content, "the llama.cpp runner leaves the tag in the prompt"
    assert emulator.chats[-1].images[0].format == "PNG", "the image still travelled"
    emulator.non_vision_image_policy = "error"
    with pytest.raises(ollama.ResponseError) as caught:
        await collect(await client.chat(model="llama3.2", messages=ask, stream=True))
    assert (caught.value.status_code, caught.value.error) == (500, MISSING_VISION_DATA)


async def test_a_format_the_runner_cannot_decode(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    ask = [{"role": "user", "content": "What is this?", "images": [picture("GIF")]}]
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="llava", messages=ask)
    assert caught.value.error == UNKNOWN_IMAGE_FORMAT
    assert emulator.chats[-1].images[0].format == "GIF"


async def test_generate_streams_response_fields(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    parts = [
        p async for p in await client.generate(model="llava", prompt="Describe", images=[picture("JPEG")], stream=True)
    ]
    assert "".join(p.response for p in parts) == emulator.find("llava").reply
    assert parts[-1].done
    assert parts[-1].context, "the deprecated context comes with the done line"
    assert emulator.generates[-1].images[0].format == "JPEG"
    assert emulator.chats == [], "generate requests are recorded separately"
    with pytest.raises(ollama.ResponseError) as caught:
        await client.generate(model="nomic-embed-text", prompt="x")
    assert caught.value.error == '"nomic-embed-text" does not support generate'


async def test_a_dropped_connection_is_not_a_clean_end(client: ollama.AsyncClient, emulator: OllamaEmulator) -> None:
    emulator.drop_after_chunks = 2
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        await consume(await client.chat(model="llava", messages=HI, stream=True), received)
    assert len(received) == 2
    assert emulator.chats[-1].dropped


# ---- raw HTTP: the wire itself ----------------------------------------------------------------------


async def test_wire_format_of_a_stream(base_url: str, http: aiohttp.ClientSession, emulator: OllamaEmulator) -> None:
    emulator.find("llava").reply = "A <b>cat</b> & a café."
    async with http.post(f"{base_url}/api/chat", json={"model": "llava", "messages": HI}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson", "no charset"
        assert response.headers["Transfer-Encoding"] == "chunked"
        raw = await response.read()
    assert raw.endswith(b"\n")
    lines = raw[:-1].split(b"\n")
    assert all(line.strip() for line in lines), "no blank lines"
    objects = [json.loads(line) for line in lines]
    assert b"\\u003cb\\u003e" in raw, "Go's json.Marshal escapes HTML characters"
    assert b"\\u0026" in raw
    assert "café".encode() in raw, "non-ASCII stays UTF-8"
    first, final = objects[0], objects[-1]
    assert list(first) == ["model", "created_at", "message", "done"]
    assert list(first["message"]) == ["role", "content"]
    assert first["model"] == "llava"
    assert first["done"] is False
    assert all(CREATED_AT.fullmatch(o["created_at"]) for o in objects), [o["created_at"] for o in objects]
    assert list(final) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert final["message"] == {"role": "assistant", "content": ""}
    assert all(type(final[m]) is int for m in METRICS)
    assert not any(m in o for o in objects[:-1] for m in (*METRICS, "done_reason")), "metrics only at the end"
    assert "".join(o["message"]["content"] for o in objects) == "A <b>cat</b> & a café."


async def test_lines_are_flushed_one_by_one(
    base_url: str, http: aiohttp.ClientSession, emulator: OllamaEmulator
) -> None:
    emulator.chunk_delay = 0.05
    async with http.post(f"{base_url}/api/chat", json={"model": "llava", "messages": HI}) as response:
        first = json.loads(await response.content.readline())
        record = emulator.chats[-1]
        assert first["message"]["content"]
        assert not record.completed, "the first line arrived while the rest was still being generated"
        rest = [json.loads(line) for line in (await response.read()).splitlines()]
    assert rest[-1]["done"] is True
    assert record.completed


async def test_non_streaming_wire_format(base_url: str, http: aiohttp.ClientSession) -> None:
    body = {"model": "llava", "messages": HI, "stream": False}
    async with http.post(f"{base_url}/api/chat", json=body) as response:
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        raw = await response.read()
    answer = json.loads(raw)
    assert b"\n" not in raw
    assert list(answer)[:5] == ["model", "created_at", "message", "done", "done_reason"]
    assert answer["message"]["content"].startswith("The picture shows")


@pytest.mark.parametrize(
    ("image", "offset"),
    [
        ("data:image/png;base64,iVBORw0KGgo=", 4),  # ollama-js#68
        ("https://example.com/cat.png", 5),  # litellm#30313
        ("iVBORw0KGgo", 8),  # no padding: the short last quantum is reported
        ("iVBO-w0K", 4),  # URL-safe alphabet
        ("QUJD\r\nREVG\nR0g=x", 15),  # newlines are skipped but counted; garbage after padding
    ],
)
async def test_bad_base64_is_refused_before_the_model_lookup(
    base_url: str, http: aiohttp.ClientSession, emulator: OllamaEmulator, image: str, offset: int
) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x", "images": [image]}]}
    async with http.post(f"{base_url}/api/chat", json=body) as response:
        assert response.status == 400
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await response.json() == {"error": f"illegal base64 data at input byte {offset}"}
    assert emulator.chats[-1].status == 400
    assert emulator.chats[-1].images == []


async def test_crlf_wrapped_base64_is_accepted(
    base_url: str, http: aiohttp.ClientSession, emulator: OllamaEmulator
) -> None:
    encoded = base64.encodebytes(picture("JPEG")).decode().replace("\n", "\r\n")  # MIME-style 76-char lines
    body = {"model": "llava", "messages": [{"role": "user", "content": "x", "images": [encoded]}], "stream": False}
    async with http.post(f"{base_url}/api/chat", json=body) as response:
        assert response.status == 200
    assert emulator.chats[-1].images[0].size == (64, 48)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"", 400, "missing request body"),
        (b"  \n", 400, "missing request body"),
        (b"{", 400, "unexpected EOF"),
        (b'{"model": x}', 400, "invalid character 'x' looking for beginning of value"),
        (b"[]", 400, "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (b'{"messages":[{"role":"user","content":"hi"}]}', 400, "model is required"),
        (
            b'{"model":"llava","messages":[{"role":"user","content":"hi"}],"top_logprobs":21}',
            400,
            "top_logprobs must be between 0 and 20",
        ),
        (
            b'{"model":"llava","messages":[{"role":"user","images":[5]}]}',
            400,
            "json: cannot unmarshal number into Go struct field Alias.images of type api.ImageData",
        ),
        (
            b'{"model":"llava","think":"x","messages":[]}',
            400,
            'invalid think value: "x" (must be "high", "medium", "low", true, or false)',
        ),
    ],
)
async def test_decoding_errors(
    base_url: str, http: aiohttp.ClientSession, body: bytes, status: int, error: str
) -> None:
    async with http.post(f"{base_url}/api/chat", data=body, headers={"Content-Type": "application/json"}) as response:
        assert (response.status, await response.json()) == (status, {"error": error})


async def test_legacy_pre_token_error_is_http_200_with_one_line(serve: Serve, http: aiohttp.ClientSession) -> None:
    emulator = OllamaEmulator(version_profile="legacy", fail_before_first_token="image: unknown format")
    base = await serve(emulator)
    async with http.post(f"{base}/api/chat", json={"model": "llava", "messages": HI}) as response:
        assert (response.status, response.headers["Content-Type"]) == (200, "application/x-ndjson")
        assert await response.read() == b'{"error":"image: unknown format\\n"}\n'
    emulator.version_profile = "modern"
    async with http.post(f"{base}/api/chat", json={"model": "llava", "messages": HI}) as response:
        assert (response.status, response.headers["Content-Type"]) == (500, "application/json")
        assert await response.json() == {"error": "image: unknown format"}


async def test_client_disconnect_stops_generation(
    base_url: str, http: aiohttp.ClientSession, emulator: OllamaEmulator
) -> None:
    emulator.chunk_delay = 0.2  # the whole reply would take about 2.5 s
    response = await http.post(f"{base_url}/api/chat", json={"model": "llava", "messages": HI})
    assert json.loads(await response.content.readline())["done"] is False
    response.close()
    record = await emulator.wait_for_disconnect(timeout=2)
    assert record is emulator.chats[-1]
    assert record.cancelled
    assert not record.completed
    await emulator.wait_for_idle(timeout=1)
    sent = record.chunks_sent
    await asyncio.sleep(0.5)
    assert record.chunks_sent == sent <= 2, "generation stopped"


async def test_client_disconnect_during_the_model_load(
    base_url: str, http: aiohttp.ClientSession, emulator: OllamaEmulator
) -> None:
    emulator.first_token_delay = 5
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(http.post(f"{base_url}/api/chat", json={"model": "llava", "messages": HI}), 0.2)
    record = await emulator.wait_for_disconnect(timeout=1)
    assert record.cancelled
    assert record.status is None
    assert record.lines == []


async def test_concurrent_streams_are_counted(serve: Serve, connect: Callable[[str], ollama.AsyncClient]) -> None:
    emulator = OllamaEmulator(chunk_delay=0.01)
    client = connect(await serve(emulator))
    streams = [await client.chat(model="llava", messages=HI, stream=True) for _ in range(3)]
    results = await asyncio.gather(*(collect(stream) for stream in streams))
    assert all(parts[-1].done for parts in results)
    assert emulator.max_active_chats >= 2
    assert emulator.active_chats == 0


async def test_small_endpoints_unknown_paths_and_methods(
    base_url: str, http: aiohttp.ClientSession, emulator: OllamaEmulator
) -> None:
    async with http.get(f"{base_url}/") as response:
        assert (response.status, await response.text()) == (200, "Ollama is running")
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    async with http.head(f"{base_url}/api/tags") as response:
        assert response.status == 200
    async with http.get(f"{base_url}/api/version") as response:
        assert await response.json() == {"version": emulator.version}
    async with http.get(f"{base_url}/api/nothing") as response:
        assert (response.status, await response.text()) == (404, "404 page not found")
    async with http.get(f"{base_url}/api/chat") as response:
        assert (response.status, await response.text()) == (405, "405 method not allowed")
    async with http.head(f"{base_url}/api/ps") as response:
        assert response.status == 405, "Ollama registers no HEAD for /api/ps"
    assert ("GET", "/api/nothing") in emulator.calls
    emulator.version_profile = "legacy"
    assert emulator.version == "0.9.6"


# ---- the base64 decoder against Go's rules ----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=48), breaks=st.lists(st.integers(min_value=0, max_value=80), max_size=4))
def test_valid_base64_with_line_breaks_decodes(data: bytes, breaks: list[int]) -> None:
    encoded = base64.b64encode(data)
    for position in sorted(breaks, reverse=True):
        cut = min(position, len(encoded))
        encoded = encoded[:cut] + b"\r\n" + encoded[cut:]
    assert go_base64_decode(encoded) == data
    assert _go_decode_quantums(encoded) == data


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="QUJDab+/=-_ \r\n:", max_size=20))
def test_fast_path_and_go_port_agree(text: str) -> None:
    """The regex fast path must never accept what Go rejects, nor disagree on the bytes."""
    raw = text.encode()
    try:
        expected: bytes | int = _go_decode_quantums(raw)
    except GoBase64Error as exc:
        expected = exc.offset
    try:
        actual: bytes | int = go_base64_decode(raw)
    except GoBase64Error as exc:
        actual = exc.offset
    assert actual == expected


@contextlib.contextmanager
def emulator_cli(cwd: Path, *args: str, shows: str = "") -> Iterator[str]:
    """`python -m cli.ollama_emulator --port 0 *args` from `cwd`; yields the base URL its first line
    prints (after `shows` in that line), stops it with Ctrl-C afterwards and insists it exits cleanly."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "cli.ollama_emulator", "--port", "0", *args]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+) \(canned answers" + re.escape(shows), first)
        assert found, first + (process.stderr.read() if process.poll() is not None and process.stderr else "")
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_the_emulator_runs_from_any_directory_and_prints_its_address(tmp_path: Path) -> None:
    """`python -m cli.ollama_emulator` outside the checkout (PYTHONPATH stands in for an installed retina)."""
    with (
        emulator_cli(tmp_path) as url,
        urllib.request.urlopen(url + "/api/tags", timeout=5) as response,  # noqa: S310 - loopback
    ):
        names = [model["name"] for model in json.load(response)["models"]]
    assert {"llava:latest", "qwen3-vl:latest"} <= set(names)


def test_one_showcase_model_sees_and_thinks_and_every_reply_says_it_is_canned() -> None:
    models = {model.name: model for model in showcase_models()}
    assert models["qwen3-vl:latest"].vision
    assert models["qwen3-vl:latest"].thinking
    assert models["llava:latest"].vision
    assert all(model.reply.startswith(CANNED_NOTICE) for model in models.values())


def test_an_emulator_process_has_the_models_it_is_given_and_those_preloaded_are_running(tmp_path: Path) -> None:
    """`--models` / `--loaded`: one emulator per port stands for one server of a fleet (tests/vision_gateway/
    test_fleet.py); the official client reads its /api/tags and /api/ps."""
    args = ("--models", "llava,Mistral", "--loaded", "llava")
    with (
        emulator_cli(tmp_path, *args, shows="; models: llava, mistral)") as url,
        ollama.Client(host=url) as client,
    ):
        assert sorted(m.model or "" for m in client.list().models) == ["llava:latest", "mistral:latest"]
        [running] = client.ps().models
        assert running.model == "llava:latest"
        reply = client.chat(model="mistral", messages=HI)
        assert reply.message.content == f"{CANNED_NOTICE} Hello from Mistral."
        assert sorted(m.model or "" for m in client.ps().models) == ["llava:latest", "mistral:latest"]
