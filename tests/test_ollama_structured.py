"""The emulator's structured output (`format`), driven by the official `ollama` client.

Real Ollama constrains the model with a grammar built from `format`; the emulator must answer with
JSON the schema accepts, streamed in pieces, and refuse a format that is neither "json" nor an object.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import ollama
import pytest

from cli.ollama_emulator import OllamaEmulator
from cli.ollama_structured import schema_instance

HI = [{"role": "user", "content": "hi"}]
WORDS = ["grey", "cat"]


@pytest.fixture
async def base_url(aiohttp_server: Any) -> str:
    server = await aiohttp_server(OllamaEmulator().make_app())
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[ollama.AsyncClient]:
    made = ollama.AsyncClient(host=base_url)
    yield made
    await made.close()  # httpx warns about open sockets, and warnings are errors here


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
        {"type": "array", "items": {"type": "number", "minimum": 2.5}, "minItems": 3, "maxItems": 3},
        {"type": "string", "minLength": 10, "maxLength": 12},
        {"type": "integer", "exclusiveMinimum": 4, "maximum": 9},
        {"enum": ["red", "green"]},
        {"const": {"fixed": True}},
        {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
        {"type": ["null", "object"], "required": ["only"], "properties": {}},
        {"type": "object", "properties": {"deep": {"type": "object", "properties": {"list": {"items": {}}}}}},
        {},
    ],
)
def test_the_instance_follows_the_schema(schema: dict[str, Any]) -> None:
    jsonschema.validate(schema_instance(schema, WORDS), schema)


async def test_a_schema_streams_json_that_follows_it(client: ollama.AsyncClient) -> None:
    schema = {
        "type": "object",
        "properties": {"animal": {"type": "string"}, "legs": {"type": "integer"}, "pet": {"type": "boolean"}},
        "required": ["animal", "legs", "pet"],
    }
    parts = [part async for part in await client.chat(model="llava", messages=HI, format=schema, stream=True)]
    text = "".join(p.message.content for p in parts)
    assert sum(1 for p in parts if p.message.content) >= 3, "several chunks, as a model writes them"
    jsonschema.validate(json.loads(text), schema)
    assert parts[-1].done


async def test_format_json_is_a_json_object(client: ollama.AsyncClient) -> None:
    answer = await client.chat(model="llama3.2", messages=HI, format="json")
    assert isinstance(json.loads(answer.message.content), dict)


@pytest.mark.parametrize("bad", ["xml", 5, ["json"]])
async def test_a_format_neither_json_nor_a_schema_is_400(base_url: str, bad: Any) -> None:
    body = {"model": "llava", "messages": HI, "format": bad}
    async with aiohttp.ClientSession() as http, http.post(f"{base_url}/api/chat", json=body) as response:
        assert response.status == 400
        assert await response.json() == {"error": 'invalid format: expected "json" or a valid JSON schema'}
