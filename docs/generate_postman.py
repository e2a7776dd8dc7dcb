"""Generate docs/retina.postman_collection.json from the OpenAPI documents.

    .venv/bin/python docs/generate_postman.py

Every operation becomes a request (in a folder per service) with the service token and user
headers as collection variables; the upload, ask, stop and serve requests carry working examples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE / "retina.postman_collection.json"
SERVICES = {
    "image-store": ("{{imageStoreUrl}}", "image-store.yaml"),
    "vision-gateway": ("{{gatewayUrl}}", "vision-gateway.yaml"),
}

EXAMPLE_BODIES: dict[str, dict[str, Any]] = {
    "uploadImage": {"mode": "formdata", "formdata": [{"key": "file", "type": "file", "src": "photo.jpg"}]},
    "streamMessage": {
        "mode": "raw",
        "raw": json.dumps({"message": "What is in this picture?", "model": "llava", "image_ids": ["{{imageId}}"]}),
        "options": {"raw": {"language": "json"}},
    },
    "createChatCompletion": {
        "mode": "raw",
        "raw": json.dumps(
            {
                "model": "llava",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is in this picture?"},
                            {"type": "image_url", "image_url": {"url": "retina:{{imageId}}"}},
                        ],
                    }
                ],
            }
        ),
        "options": {"raw": {"language": "json"}},
    },
    "linkImage": {
        "mode": "raw",
        "raw": json.dumps({"message_id": "{{messageId}}"}),
        "options": {"raw": {"language": "json"}},
    },
}
PATH_VALUES = {"image_id": "{{imageId}}", "stream_id": "{{streamId}}", "conversation_id": "{{conversationId}}"}


def request_item(base: str, path: str, method: str, operation: dict[str, Any]) -> dict[str, Any]:
    concrete = path
    for name, value in PATH_VALUES.items():
        concrete = concrete.replace("{" + name + "}", value)
    public = operation.get("security") == []
    headers = [] if public else [{"key": "Authorization", "value": "Bearer {{serviceToken}}"}]
    parameters = [p.get("name") for p in operation.get("parameters", []) if isinstance(p, dict)]
    refs = [p.get("$ref", "") for p in operation.get("parameters", []) if isinstance(p, dict)]
    if not public and (any(r.endswith("/UserId") for r in refs) or "X-User-Id" in parameters):
        headers.append({"key": "X-User-Id", "value": "{{userId}}"})
    item: dict[str, Any] = {
        "name": operation.get("summary") or operation["operationId"],
        "request": {
            "method": method.upper(),
            "header": headers,
            "url": {"raw": base + concrete, "host": [base], "path": [p for p in concrete.split("/") if p]},
        },
    }
    if operation["operationId"] in EXAMPLE_BODIES:
        item["request"]["body"] = EXAMPLE_BODIES[operation["operationId"]]
    return item


def collection() -> dict[str, Any]:
    folders = []
    for name, (base, document) in SERVICES.items():
        spec = yaml.safe_load((HERE / "openapi" / document).read_text())
        items = [
            request_item(base, path, method, operation)
            for path, methods in spec["paths"].items()
            for method, operation in methods.items()
            if method in ("get", "post", "patch", "delete")
        ]
        folders.append({"name": name, "item": items})
    signed = {
        "name": "Serve image with the signed URL (no token)",
        "request": {"method": "GET", "header": [], "url": {"raw": "{{imageStoreUrl}}{{signedPath}}"}},
    }
    folders[0]["item"].append(signed)
    return {
        "info": {
            "name": "retina",
            "description": "Generated from docs/openapi by docs/generate_postman.py. Upload, ask, stop, serve.",
            "schema": "https://schema.getpostman.com/json/collection/v2.1.0/collection.json",
        },
        "variable": [
            {"key": "imageStoreUrl", "value": "http://127.0.0.1:8081"},
            {"key": "gatewayUrl", "value": "http://127.0.0.1:8082"},
            {"key": "serviceToken", "value": "paste the token retina up printed"},
            {"key": "userId", "value": "alice"},
            {"key": "imageId", "value": ""},
            {"key": "streamId", "value": ""},
            {"key": "conversationId", "value": ""},
            {"key": "messageId", "value": ""},
            {"key": "signedPath", "value": "the url field of an ImageRecord"},
        ],
        "item": folders,
    }


def render() -> str:
    return json.dumps(collection(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
