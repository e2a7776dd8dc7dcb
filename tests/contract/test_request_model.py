"""The vision-gateway document's request schemas are the one request model's (chat/request.py).

The JSON body's `ChatRequest` schema, with every `$ref` resolved, must equal what
`ChatRequest.model_json_schema()` generates from the rules the code validates with (prose keys
aside); the multipart form must name the same fields and share their schemas where the part's
text is the JSON value itself. Change a rule in the code without the document (or the other way)
and this fails, before schemathesis would find the drift by chance.
"""

from __future__ import annotations

from typing import Any

import yaml

from services.vision_gateway.chat.request import ChatRequest
from tests.conftest import ROOT

PROSE = {"title", "description", "examples", "default"}


def _document() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docs" / "openapi" / "vision-gateway.yaml").read_text())


def _resolved(value: Any, schemas: dict[str, Any]) -> Any:
    """The schema with `#/components/schemas/...` refs inlined and prose keys dropped."""
    if isinstance(value, dict):
        if "$ref" in value:
            target = schemas[value["$ref"].rsplit("/", 1)[1]]
            rest = {k: v for k, v in value.items() if k != "$ref"}
            return _resolved({**target, **rest}, schemas)
        return {k: _resolved(v, schemas) for k, v in value.items() if k not in PROSE}
    if isinstance(value, list):
        return [_resolved(item, schemas) for item in value]
    return value


def test_the_json_body_schema_is_the_request_models() -> None:
    schemas = _document()["components"]["schemas"]
    documented = _resolved(schemas["ChatRequest"], schemas)
    generated = _resolved(ChatRequest.model_json_schema(), {})
    assert documented == generated


def test_the_form_names_the_models_fields_and_shares_their_text_rules() -> None:
    schemas = _document()["components"]["schemas"]
    operation = _document()["paths"]["/api/stream-message"]["post"]["requestBody"]["content"]
    form = _resolved(operation["multipart/form-data"]["schema"], schemas)
    generated = _resolved(ChatRequest.model_json_schema(), {})["properties"]
    assert set(form["properties"]) == {*generated, "images"}
    assert set(form["required"]) == set(ChatRequest.model_json_schema()["required"])
    for same in ("message", "model", "options", "format"):  # a part's text is the JSON value itself
        assert form["properties"][same] == generated[same], same
    assert form["properties"]["image_ids"]["items"] == generated["image_ids"]["items"]
    assert form["properties"]["image_ids"]["maxItems"] == generated["image_ids"]["maxItems"]
