"""The emulator against the official `ollama` client: if the client accepts it, so would Ollama's users."""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import Any

import aiohttp
import ollama
import pytest
from PIL import Image

from tests.ollama_emulator import EmulatedModel, OllamaEmulator


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def emulator() -> OllamaEmulator:
    return OllamaEmulator()


@pytest.fixture
async def clients() -> Any:
    """Official clients made by a test; closed afterwards (httpx would warn about open sockets)."""
    made: list[ollama.AsyncClient] = []

    def make(host: str) -> ollama.AsyncClient:
        client = ollama.AsyncClient(host=host)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def base_url(aiohttp_server: Any, emulator: OllamaEmulator) -> str:
    server = await aiohttp_server(emulator.make_app())
    return str(server.make_url("")).rstrip("/")


async def test_streaming_chat_with_an_image(clients: Any, emulator: OllamaEmulator, base_url: str) -> None:
    client = clients(base_url)
    parts = []
    last = None
    async for part in await client.chat(
        model="llava", messages=[{"role": "user", "content": "What is this?", "images": [jpeg_bytes()]}], stream=True
    ):
        parts.append(part.message.content)
        last = part
    assert "".join(parts) == emulator.find("llava").reply  # type: ignore[union-attr]
    assert last is not None
    assert last.done is True
    assert last.done_reason == "stop"
    assert isinstance(last.eval_count, int)
    assert last.eval_count == len(parts) - 1
    assert isinstance(last.total_duration, int)
    assert last.prompt_eval_count >= 768, "an image counts as 768 prompt tokens"
    seen = emulator.chats[-1].images
    assert [(i.format, i.size) for i in seen] == [("JPEG", (64, 48))]
    assert emulator.chats[-1].completed


async def test_non_streaming_chat(clients: Any, base_url: str, emulator: OllamaEmulator) -> None:
    response = await clients(base_url).chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert response.message.content == emulator.find("llama3.2").reply  # type: ignore[union-attr]
    assert response.done


async def test_show_modern_and_legacy_vision_signals(clients: Any, aiohttp_server: Any) -> None:
    emulator = OllamaEmulator(
        [
            EmulatedModel("llava:latest", vision=True),
            EmulatedModel("old-llava:latest", vision=True, style="projector"),
            EmulatedModel("gemma3:latest", vision=True, style="vision_block_count", family="gemma3"),
            EmulatedModel("llama-vision:latest", vision=True, style="families_mllama"),
        ]
    )
    server = await aiohttp_server(emulator.make_app())
    client = clients(str(server.make_url("")).rstrip("/"))
    modern = await client.show("llava")
    assert "vision" in (modern.capabilities or [])
    assert modern.modelinfo is not None
    projector = await client.show("old-llava")
    assert projector.capabilities is None
    assert "clip" in (projector.details.families or [])
    gemma = await client.show("gemma3")
    assert gemma.capabilities is None
    assert gemma.modelinfo["gemma3.vision.block_count"] == 27
    mllama = await client.show("llama-vision")
    assert mllama.details.families == ["mllama"]


async def test_list_and_ps(clients: Any, base_url: str) -> None:
    client = clients(base_url)
    listed = await client.list()
    assert {m.model for m in listed.models} >= {"llava:latest", "llama3.2:latest"}
    assert (await client.ps()).models == []


@pytest.mark.parametrize(
    ("profile", "message"),
    [("modern", "model 'nope' not found"), ("legacy", 'model "nope" not found, try pulling it first')],
)
async def test_unknown_model_messages_by_version(clients: Any, aiohttp_server: Any, profile: str, message: str) -> None:
    server = await aiohttp_server(OllamaEmulator(version_profile=profile).make_app())
    client = clients(str(server.make_url("")).rstrip("/"))
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    assert caught.value.error == message


async def test_error_mid_stream(clients: Any, emulator: OllamaEmulator, base_url: str) -> None:
    emulator.fail_after_chunks = 3
    received: list[str] = []

    async def consume() -> None:
        async for part in await clients(base_url).chat(
            model="llava", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            received.append(part.message.content)

    with pytest.raises(ollama.ResponseError) as caught:
        await consume()
    assert len(received) == 3
    assert "error was encountered while running the model" in caught.value.error


async def test_runner_error_before_first_token_modern_vs_legacy(clients: Any, aiohttp_server: Any) -> None:
    for profile, status in (("modern", 500), ("legacy", -1)):
        emulator = OllamaEmulator(version_profile=profile)
        emulator.fail_before_first_token = "llama runner process has terminated"
        server = await aiohttp_server(emulator.make_app())
        client = clients(str(server.make_url("")).rstrip("/"))
        with pytest.raises(ollama.ResponseError) as caught:
            async for _ in await client.chat(model="llava", messages=[{"role": "user", "content": "x"}], stream=True):
                pass
        assert caught.value.status_code == status, profile
        assert "llama runner process has terminated" in caught.value.error


@pytest.mark.parametrize(
    ("image", "byte"), [("data:image/png;base64,iVBORw0KGgo=", 4), ("https://example.com/cat.png", 5)]
)
async def test_bad_base64_is_rejected_before_model_lookup(base_url: str, image: str, byte: int) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x", "images": [image]}]}
        async with session.post(f"{base_url}/api/chat", json=body) as response:
            assert response.status == 400
            assert await response.json() == {"error": f"illegal base64 data at input byte {byte}"}


async def test_wire_format_of_the_stream(base_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"model": "llava", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(f"{base_url}/api/chat", json=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/x-ndjson"
            raw = await response.read()
    lines = raw.split(b"\n")
    assert lines[-1] == b"", "every line ends with a newline"
    objects = [json.loads(line) for line in lines[:-1]]
    assert all(line.strip() for line in lines[:-1]), "no blank lines"
    assert list(objects[0]) == ["model", "created_at", "message", "done"]
    assert objects[0]["model"] == "llava", "the name is echoed as sent"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z", objects[0]["created_at"])
    final = objects[-1]
    assert list(final)[:5] == ["model", "created_at", "message", "done", "done_reason"]
    assert all(isinstance(final[k], int) for k in ("total_duration", "eval_count", "eval_duration"))
    assert not any("total_duration" in o for o in objects[:-1]), "metrics only on the final line"


async def test_client_disconnect_is_recorded(emulator: OllamaEmulator, base_url: str) -> None:
    emulator.chunk_delay = 0.2
    async with aiohttp.ClientSession() as session:
        body = {"model": "llava", "messages": [{"role": "user", "content": "hi"}]}
        response = await session.post(f"{base_url}/api/chat", json=body)
        await response.content.readline()
        response.close()
    record = await emulator.wait_for_disconnect(within=3)
    assert record.cancelled
    assert not record.completed
    sent = record.chunks_sent
    await asyncio.sleep(0.5)
    assert record.chunks_sent == sent, "generation stopped"


async def test_busy_then_success(clients: Any, emulator: OllamaEmulator, base_url: str) -> None:
    emulator.status_sequence = [503]
    client = clients(base_url)
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="llava", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert (await client.chat(model="llava", messages=[{"role": "user", "content": "hi"}])).done


async def test_unknown_paths_and_methods(base_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/api/nothing") as response:
            assert (response.status, await response.text()) == (404, "404 page not found")
        async with session.get(f"{base_url}/api/chat") as response:
            assert (response.status, await response.text()) == (405, "405 method not allowed")
        async with session.get(f"{base_url}/") as response:
            assert await response.text() == "Ollama is running"
