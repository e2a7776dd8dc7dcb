"""Tracing end to end: a real OTLP/HTTP receiver gets what both services export for one ask.

The stack (gateway, image-store, Ollama emulator, PostgreSQL) runs with only the standard OTEL_*
variables set; the receiver decodes the protobuf requests the SDK's exporter sends.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest

from common.app import TRACING_KEY, create_service_app
from common.tracing.config import TracingMisconfigured, tracing_exporters
from services.image_store.settings import load_image_store_settings
from services.vision_gateway.settings import load_gateway_settings
from tests.conftest import auth_headers
from tests.otlp_receiver import (
    CLIENT,
    INTERNAL,
    SERVER,
    OtlpReceiver,
    ReceivedSpan,
)
from tests.vision_gateway.conftest import Stack, big_photo, read_sse

SECRET_QUESTION = "Is the zebra-violet-quokka in this picture?"


@pytest.fixture
async def traced_stack(otlp_receiver: OtlpReceiver, stack: Stack) -> Stack:
    """The stack, built after `otlp_receiver` has set the OTEL_* variables it reads at start."""
    del otlp_receiver
    return stack


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The JSON log lines written while the test runs, rendered as production renders them."""
    root = logging.getLogger()
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)


def _tree_of(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans if s.trace_id == trace_id}


def _ancestors(span: ReceivedSpan, tree: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_span_id:
        span = tree[span.parent_span_id]
        chain.append(span)
    return chain


async def test_a_multipart_ask_with_one_image_is_one_trace_across_both_services(
    traced_stack: Stack, otlp_receiver: OtlpReceiver, log_lines: io.StringIO
) -> None:
    image = big_photo(800, 600)
    form = aiohttp.FormData()
    form.add_field("message", SECRET_QUESTION)
    form.add_field("model", "llava")
    form.add_field("images", io.BytesIO(image), filename="photo.jpg", content_type="image/jpeg")
    response = await traced_stack.gateway.post("/api/stream-message", data=form, headers=auth_headers())
    result = await read_sse(response)
    assert result.status == 200, result.events
    start, done = result.of("start")[0], result.of("done")[0]
    answer = result.text
    assert answer
    assert done["stats"]["completion_tokens"] > 0

    ask = await otlp_receiver.wait_for("POST /api/stream-message", "vision_gateway")
    chat = await otlp_receiver.wait_for(f"chat {start['model']}", "vision_gateway")
    tree = _tree_of(otlp_receiver.spans, ask.trace_id)

    # One trace: the gateway's request is its root; everything else descends from it, both services.
    assert ask.kind == SERVER
    assert ask.parent_span_id == "", ask
    assert {s.service for s in tree.values()} == {"vision_gateway", "image_store"}, tree
    for span in tree.values():
        assert span is ask or ask in _ancestors(span, tree), f"{span} is not under the ask"

    # gateway -> image-store: the store's server span is the child of the gateway's client span.
    upload = next(s for s in tree.values() if s.service == "image_store" and s.name == "POST /api/images")
    assert upload.kind == SERVER
    caller = tree[upload.parent_span_id]
    assert caller.service == "vision_gateway"
    assert caller.kind == CLIENT
    assert caller.attributes["http.request.method"] == "POST"
    assert caller.attributes["http.response.status_code"] == 201
    assert upload.attributes["http.route"] == "/api/images"
    assert upload.attributes["http.response.status_code"] == 201

    # In the image-store: the decode and PostgreSQL, under its request.
    decode = next(s for s in tree.values() if s.name == "image decode")
    assert decode.service == "image_store"
    assert upload in _ancestors(decode, tree)
    assert decode.attributes["retina.image.mime_type"] == "image/jpeg"
    assert (decode.attributes["retina.image.width"], decode.attributes["retina.image.height"]) == (800, 600)
    store_queries = [s for s in tree.values() if s.service == "image_store" and s.name.endswith(" postgresql")]
    inserted = [s for s in store_queries if s.attributes["db.operation.name"] == "INSERT"]
    assert inserted, store_queries
    assert all(upload in _ancestors(s, tree) for s in inserted)
    for query in store_queries:  # each under one of the store's requests (the upload, then the link)
        assert query.kind == CLIENT
        assert any(a.service == "image_store" and a.kind == SERVER for a in _ancestors(query, tree)), query

    # In the gateway: its own queries, the image prepared for the model, Ollama's request.
    gateway_queries = [s for s in tree.values() if s.service == "vision_gateway" and s.name.endswith(" postgresql")]
    recorded = [s for s in gateway_queries if "INSERT INTO messages" in s.attributes["db.query.text"]]
    assert recorded, gateway_queries  # the turn is recorded (one statement), the answer saved (UPDATE)
    assert "UPDATE" in {s.attributes["db.operation.name"] for s in gateway_queries}, gateway_queries
    assert all(s.attributes["db.system.name"] == "postgresql" for s in gateway_queries)
    prepare = next(s for s in tree.values() if s.name == "image prepare")
    assert prepare.service == "vision_gateway"
    # the image as the store keeps it (re-encoded), fetched back from it
    assert prepare.attributes["retina.image.input_bytes"] == decode.attributes["retina.image.size_bytes"]
    ollama = [
        s for s in tree.values() if s.kind == CLIENT and str(s.attributes.get("url.full", "")).endswith("/api/chat")
    ]
    assert len(ollama) == 1, ollama
    assert ollama[0].attributes["http.response.status_code"] == 200

    # The ask's span: model, stream ID, time to first token, token counts.
    assert chat.kind == INTERNAL
    assert chat.trace_id == ask.trace_id
    assert chat.attributes["gen_ai.request.model"] == start["model"]
    assert chat.attributes["retina.stream.id"] == start["stream_id"]
    assert chat.attributes["retina.message.id"] == done["message_id"]
    assert chat.attributes["retina.stream.outcome"] == "completed"
    assert chat.attributes["retina.images"] == 1
    assert chat.attributes["retina.stream.time_to_first_token_ms"] == done["stats"]["time_to_first_token_ms"]
    assert chat.attributes["gen_ai.usage.input_tokens"] == done["stats"]["prompt_tokens"]
    assert chat.attributes["gen_ai.usage.output_tokens"] == done["stats"]["completion_tokens"]
    assert "first_token" in chat.events

    # Never the message, the answer or the image: not in any attribute, not anywhere in what was sent.
    exported = b"".join(otlp_receiver.bodies)
    for text in (SECRET_QUESTION, "zebra-violet-quokka", answer.strip()[:40]):
        assert text.encode() not in exported, f"{text!r} was exported"
    assert image[2000:2032] not in exported, "image bytes were exported"
    assert otlp_receiver.content_types == {"application/x-protobuf"}

    # Every log line written inside the traced requests names the trace and the span it was in.
    records = [json.loads(line) for line in log_lines.getvalue().splitlines() if line.startswith("{")]
    in_requests = [r for r in records if r.get("request_id")]
    assert in_requests, records
    for record in in_requests:
        assert record.get("trace_id") == ask.trace_id, record
        assert record.get("span_id") in tree, record


async def test_an_incoming_traceparent_is_continued_and_probes_are_not_traced(
    traced_stack: Stack, otlp_receiver: OtlpReceiver
) -> None:
    """A chat backend that traces passes its traceparent; the gateway's spans join that trace."""
    parent_trace, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {**auth_headers(), "traceparent": f"00-{parent_trace}-{parent_span}-01"}
    models = await traced_stack.gateway.get("/api/models", headers=headers)
    assert models.status == 200, await models.text()
    probe = await traced_stack.gateway.get("/readyz")
    assert probe.status == 200
    span = await otlp_receiver.wait_for("GET /api/models", "vision_gateway")
    assert (span.trace_id, span.parent_span_id) == (parent_trace, parent_span)
    assert not [s for s in otlp_receiver.spans if s.name.endswith(("/readyz", "/livez", "/metrics"))]


async def test_without_otel_variables_nothing_is_installed(no_otel_env: None, service_env: dict[str, str]) -> None:
    gateway_settings = load_gateway_settings(service_env)
    app = create_service_app(service="vision_gateway", settings=gateway_settings.common)
    assert TRACING_KEY not in app
    assert [m.__name__ for m in app.middlewares if "trace" in getattr(m, "__name__", "")] == []
    store_settings = load_image_store_settings(service_env)
    assert TRACING_KEY not in create_service_app(service="image_store", settings=store_settings.common)


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ("otlp", "console")),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, ()),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, ("otlp",)),
    ],
)
def test_which_variables_turn_tracing_on(env: dict[str, str], exporters: tuple[str, ...]) -> None:
    assert tracing_exporters(env) == exporters


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin is not available"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL=grpc"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json",
        ),
    ],
)
def test_what_this_build_cannot_export_is_refused_at_start(env: dict[str, str], problem: str) -> None:
    with pytest.raises(TracingMisconfigured) as refused:
        tracing_exporters(env)
    assert problem in refused.value.problems[0]


async def test_a_misconfigured_service_refuses_to_start(
    no_otel_env: None, monkeypatch: pytest.MonkeyPatch, service_env: dict[str, str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    with pytest.raises(TracingMisconfigured):
        create_service_app(service="image_store", settings=load_image_store_settings(service_env).common)


async def test_work_outside_requests_leaves_no_trace(traced_stack: Stack, otlp_receiver: OtlpReceiver) -> None:
    """The fleet lists every backend at start and then every OLLAMA_REFRESH_SECONDS on its own: no
    request, so no root traces of Ollama calls every few seconds (only what a request does is traced)."""
    models = await traced_stack.gateway.get("/api/models", headers=auth_headers())
    assert models.status == 200, await models.text()
    await otlp_receiver.wait_for("GET /api/models", "vision_gateway")
    await asyncio.sleep(0.5)  # the export after the request's (OTEL_BSP_SCHEDULE_DELAY is 50 ms)
    roots = [s for s in otlp_receiver.spans if not s.parent_span_id]
    assert roots, otlp_receiver.spans
    assert all(s.kind == SERVER for s in roots), roots
