"""The image-store's spans on the S3 backend: a request continued from its caller's traceparent,
with the decode and every S3 call under it (OTLP/HTTP receiver: tests/otlp_otlp_receiver.py)."""

from __future__ import annotations

from typing import Any

from tests.conftest import auth_headers
from tests.image_store.conftest import form, png
from tests.otlp_receiver import (
    CLIENT,
    SERVER,
    OtlpReceiver,
    ReceivedSpan,
)

STORAGE_BACKENDS = ["s3"]
CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def _parent(span: ReceivedSpan, spans: list[ReceivedSpan]) -> ReceivedSpan:
    return next(s for s in spans if s.span_id == span.parent_span_id)


async def test_an_upload_and_a_read_on_s3_trace_each_s3_call(
    storage_backend: str, otlp_receiver: OtlpReceiver, client_for: Any
) -> None:
    assert storage_backend == "s3"
    client = await client_for()
    traceparent = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    created = await client.post("/api/images", data=form(png(80, 60)), headers={**auth_headers(), **traceparent})
    assert created.status == 201, await created.text()
    image_id = (await created.json())["id"]
    served = await client.get(f"/api/images/{image_id}", headers={**auth_headers(), **traceparent})
    assert served.status == 200
    await served.read()

    upload = await otlp_receiver.wait_for("POST /api/images", "image_store")
    read = await otlp_receiver.wait_for("GET /api/images/{image_id}", "image_store")
    for request in (upload, read):
        assert request.kind == SERVER
        assert (request.trace_id, request.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)

    spans = [s for s in otlp_receiver.spans if s.trace_id == CALLER_TRACE]
    s3_calls = [s for s in spans if s.name.startswith("S3 ")]
    assert s3_calls, spans
    for call in s3_calls:
        assert call.kind == CLIENT
        assert call.attributes["rpc.system"] == "aws-api"
        assert call.attributes["rpc.service"] == "S3"
        assert _parent(call, spans) in (upload, read), call
    published = [s for s in s3_calls if s.attributes["rpc.method"] == "publish"]
    assert [_parent(s, spans) for s in published] == [upload]
    assert published[0].status_code != 2  # STATUS_CODE_ERROR
    fetched = [s for s in s3_calls if s.attributes["rpc.method"] == "get" and _parent(s, spans) is read]
    assert fetched, s3_calls
    decode = otlp_receiver.named("image decode", "image_store")
    assert [_parent(s, spans) for s in decode] == [upload]
