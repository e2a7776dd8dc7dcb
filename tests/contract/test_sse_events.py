"""Real gateway streams, parsed as SSE and validated event by event against the document's schemas."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import ROOT, auth_headers
from tests.contract.conftest import LiveStack
from tests.image_store.conftest import photo

GATEWAY_DOC = yaml.safe_load((ROOT / "docs" / "openapi" / "vision-gateway.yaml").read_text())


def validator_for(name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema, resolving the document's $refs in place."""
    registry: Registry = Registry().with_resource("doc", Resource.from_contents(GATEWAY_DOC, DRAFT202012))
    schema = {"$ref": f"doc#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(
        schema, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def parse_sse(raw: str) -> list[dict[str, Any]]:
    """Events as an EventSource sees them: blocks split by a blank line, comments skipped, data joined."""
    events = []
    for block in raw.split("\n\n"):
        data = [line[len("data:") :].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append({"event": "message", "data": "\n".join(data)})
    return events


async def stream(stack: LiveStack, body: dict[str, Any], user: str = "alice") -> tuple[int, Any, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.gateway_url}/api/stream-message", headers=auth_headers(user), json=body) as response,
    ):
        return response.status, response.headers, (await response.read()).decode()


def check_stream(raw: str) -> list[dict[str, Any]]:
    """Every SSE event valid against SseEvent, its JSON valid against StreamEvent; start first, one end last."""
    sse_event, stream_event = validator_for("SseEvent"), validator_for("StreamEvent")
    kinds = ("start", "chunk", "thinking", "notice", "done", "error")
    per_type = {kind: validator_for(f"{kind.capitalize()}Event") for kind in kinds}
    decoded = []
    for event in parse_sse(raw):
        sse_event.validate(event)
        payload = json.loads(event["data"])
        stream_event.validate(payload)
        per_type[payload["type"]].validate(payload)  # the discriminator picks exactly this one
        decoded.append(payload)
    kinds = [e["type"] for e in decoded]
    assert kinds[0] == "start", kinds
    assert kinds[-1] in ("done", "error"), kinds
    assert sum(k in ("done", "error") for k in kinds) == 1, kinds
    return decoded


async def test_a_text_stream_validates_and_its_ids_match_the_headers(live_stack: LiveStack) -> None:
    status, headers, raw = await stream(live_stack, {"message": "Say hello in three words.", "model": "llama3.2"})
    assert status == 200, raw
    events = check_stream(raw)
    assert [e["type"] for e in events][-1] == "done"
    assert any(e["type"] == "chunk" for e in events)
    assert headers["X-Stream-Id"] == events[0]["stream_id"]
    assert headers["X-Conversation-Id"] == events[0]["conversation_id"]


async def test_an_image_stream_with_a_notice_validates(live_stack: LiveStack) -> None:
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file", photo("chelsea.png"), filename="chelsea.png", content_type="image/png")
        async with session.post(f"{live_stack.store_url}/api/images", data=form, headers=auth_headers()) as response:
            assert response.status == 201
            image_id = (await response.json())["id"]
    question = {"message": "What is in this picture?", "model": "llava", "image_ids": [image_id]}
    status, _, raw = await stream(live_stack, question)
    assert status == 200, raw
    start = check_stream(raw)[0]
    assert start["vision"] is True
    assert start["image_ids"] == [image_id]
    # A model that cannot see answers from the text with a notice (the default fallback policy).
    status, _, raw = await stream(live_stack, {**question, "model": "llama3.2"})
    if status == 200:
        events = check_stream(raw)
        assert any(e["type"] == "notice" for e in events), events
    else:
        assert status == 422, raw  # the deployment refuses instead: still a documented answer


async def test_a_thinking_stream_validates(live_stack: LiveStack) -> None:
    status, _, raw = await stream(live_stack, {"message": "Is 1001 prime?", "model": "qwen3", "think": "high"})
    assert status == 200, raw
    kinds = [e["type"] for e in check_stream(raw)]
    assert "thinking" in kinds, kinds
    assert kinds.index("thinking") < kinds.index("chunk"), kinds


async def test_an_error_after_the_start_validates(live_stack: LiveStack) -> None:
    live_stack.emulator.fail_after_chunks = 2
    status, _, raw = await stream(live_stack, {"message": "Tell me a story.", "model": "llava"})
    assert status == 200, raw
    events = check_stream(raw)
    assert events[-1]["type"] == "error"
    assert events[-1]["partial"] is True


@pytest.mark.parametrize(
    "event",
    [
        {"type": "chunk"},
        {"type": "thinking", "content": ""},
        {"type": "thinking", "content": "hm", "partial": True},
        {"type": "done", "message_id": "not-a-uuid", "done_reason": "stop", "stats": {}, "saved": True},
        {"type": "start"},
        {"type": "surprise"},
    ],
)
def test_the_schemas_reject_malformed_events(event: dict[str, Any]) -> None:
    """The validation above can fail: malformed events do not pass."""
    with pytest.raises(jsonschema.ValidationError):
        validator_for("StreamEvent").validate(event)
