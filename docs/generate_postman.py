"""Generate docs/retina.postman_collection.json from the OpenAPI documents.

    .venv/bin/python docs/generate_postman.py

The collection is a walkthrough that runs as is (Postman's runner or newman, see README): upload ->
list -> meta -> bytes -> models -> ask -> history -> link -> stop -> ask a thinking model (`thinkingModel`)
-> serve with the signed URL -> stats -> delete -> gone -> health. Requests come from the documents (method, path, auth, user header,
name); each carries a test script that asserts the status and the shape and captures the IDs the
later requests use (imageId, signedExp/signedSig, conversationId, streamId, messageId, userMessageId).
URLs are full Postman url objects (host, path, query), so every runner can send them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE / "retina.postman_collection.json"
# A small real photograph next to the collection; newman is run with --working-dir docs.
PHOTO = "postman-photo.jpg"
SERVICES = {
    "image-store": ("imageStoreUrl", "image-store.yaml"),
    "vision-gateway": ("gatewayUrl", "vision-gateway.yaml"),
}
PATH_VALUES = {
    "image_id": "{{imageId}}",
    "stream_id": "{{streamId}}",
    "conversation_id": "{{conversationId}}",
    "model": "{{openaiModel}}",
}

JSON_BODY = {"options": {"raw": {"language": "json"}}}
BODIES: dict[str, dict[str, Any]] = {
    "uploadImage": {"mode": "formdata", "formdata": [{"key": "file", "type": "file", "src": PHOTO}]},
    "streamMessage": {
        "mode": "raw",
        "raw": json.dumps({"message": "What is in this picture?", "model": "{{model}}", "image_ids": ["{{imageId}}"]}),
        **JSON_BODY,
    },
    "linkImage": {"mode": "raw", "raw": json.dumps({"message_id": "{{userMessageId}}"}), **JSON_BODY},
    # A second ask (a new conversation) that asks a thinking model to think; see the step's name below.
    "streamMessage:think": {
        "mode": "raw",
        "raw": json.dumps({"message": "Is 1001 a prime number?", "model": "{{thinkingModel}}", "think": "high"}),
        **JSON_BODY,
    },
    # Structured output: the answer must be JSON following this schema (with sampling options, keep_alive).
    "streamMessage:structured": {
        "mode": "raw",
        "raw": json.dumps(
            {
                "message": "Describe this picture.",
                "model": "{{model}}",
                "image_ids": ["{{imageId}}"],
                "format": {
                    "type": "object",
                    "properties": {
                        "subject": {"type": "string"},
                        "objects": {"type": "integer", "minimum": 0},
                        "outdoors": {"type": "boolean"},
                    },
                    "required": ["subject", "objects", "outdoors"],
                },
                "options": {"temperature": 0, "seed": 42},
                "keep_alive": "10m",
            }
        ),
        **JSON_BODY,
    },
    "createChatCompletion": {
        "mode": "raw",
        "raw": json.dumps(
            {
                "model": "{{model}}",
                "user": "{{userId}}",
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
        **JSON_BODY,
    },
}

# (operationId, request name, test script lines). The order is the order a person (or newman) runs them.
IS_JSON = "const body = pm.response.json();"
STEPS: list[tuple[str, str, list[str]]] = [
    (
        "uploadImage",
        "Upload a photo",
        [
            "pm.test('201 Created with an ImageRecord', () => {",
            "  pm.response.to.have.status(201);",
            f"  {IS_JSON}",
            "  pm.expect(body.id).to.match(/^[0-9a-f-]{36}$/);",
            "  pm.expect(body.mime_type).to.eql('image/jpeg');",
            "  pm.expect(body.url).to.include(body.id);",
            "  pm.collectionVariables.set('imageId', body.id);",
            "  pm.collectionVariables.set('signedExp', body.url.match(/[?&]exp=([^&]+)/)[1]);",
            "  pm.collectionVariables.set('signedSig', body.url.match(/[?&]sig=([^&]+)/)[1]);",
            "});",
        ],
    ),
    (
        "listImages",
        "List my images",
        [
            "pm.test('200 with the uploaded image in the page', () => {",
            "  pm.response.to.have.status(200);",
            f"  {IS_JSON}",
            "  pm.expect(body.images.map((i) => i.id)).to.include(pm.collectionVariables.get('imageId'));",
            "  pm.expect(body).to.have.property('next_cursor');",
            "});",
        ],
    ),
    (
        "getImageMeta",
        "Image record",
        [
            "pm.test('200 with the same record', () => {",
            "  pm.response.to.have.status(200);",
            f"  {IS_JSON}",
            "  pm.expect(body.id).to.eql(pm.collectionVariables.get('imageId'));",
            "  pm.expect(body.sha256).to.match(/^[0-9a-f]{64}$/);",
            "});",
        ],
    ),
    (
        "getImageBytes",
        "Image bytes (token + user)",
        [
            "pm.test('200 image/jpeg with the SHA-256 ETag', () => {",
            "  pm.response.to.have.status(200);",
            "  pm.expect(pm.response.headers.get('Content-Type')).to.eql('image/jpeg');",
            "  pm.expect(pm.response.headers.get('ETag')).to.match(/^\"[0-9a-f]{64}\"$/);",
            "});",
        ],
    ),
    (
        "listModels",
        "Models",
        [
            "pm.test('200 with the model list', () => {",
            "  pm.response.to.have.status(200);",
            f"  {IS_JSON}",
            "  pm.expect(body.models.map((m) => m.name.split(':')[0])).to.include(pm.collectionVariables.get('model').split(':')[0]);",
            "});",
        ],
    ),
    (
        "streamMessage",
        "Ask about the photo (SSE)",
        [
            "const events = pm.response.text().split('\\n\\n').filter((b) => b.startsWith('data: ')).map((b) => JSON.parse(b.slice(6)));",
            "pm.test('200 text/event-stream: start, chunks, done', () => {",
            "  pm.response.to.have.status(200);",
            "  pm.expect(pm.response.headers.get('Content-Type')).to.include('text/event-stream');",
            "  pm.expect(events[0].type).to.eql('start');",
            "  pm.expect(events[0].image_ids).to.eql([pm.collectionVariables.get('imageId')]);",
            "  pm.expect(events.filter((e) => e.type === 'chunk').length).to.be.above(0);",
            "  pm.expect(events[events.length - 1].type).to.eql('done');",
            "  pm.expect(pm.response.headers.get('X-Stream-Id')).to.eql(events[0].stream_id);",
            "  pm.collectionVariables.set('streamId', events[0].stream_id);",
            "  pm.collectionVariables.set('conversationId', events[0].conversation_id);",
            "  pm.collectionVariables.set('messageId', events[0].message_id);",
            "  pm.collectionVariables.set('userMessageId', events[0].user_message_id);",
            "});",
        ],
    ),
    (
        "conversationMessages",
        "Conversation history",
        [
            "pm.test('200 with the question and the answer', () => {",
            "  pm.response.to.have.status(200);",
            f"  {IS_JSON}",
            "  pm.expect(body.messages.map((m) => m.role)).to.eql(['user', 'assistant']);",
            "  pm.expect(body.messages[1].id).to.eql(pm.collectionVariables.get('messageId'));",
            "  pm.expect(body.messages[1].status).to.eql('complete');",
            "  pm.expect(body.messages[0].image_ids).to.eql([pm.collectionVariables.get('imageId')]);",
            "});",
        ],
    ),
    (
        "linkImage",
        "Link the photo to the question",
        [
            "pm.test('200 with message_id set', () => {",
            "  pm.response.to.have.status(200);",
            f"  {IS_JSON}",
            "  pm.expect(body.message_id).to.eql(pm.collectionVariables.get('userMessageId'));",
            "});",
        ],
    ),
    (
        "stopStream",
        "Stop the (finished) stream",
        [
            "pm.test('200: already finished, so not stopped, with its final status', () => {",
            "  pm.response.to.have.status(200);",
            f"  {IS_JSON}",
            "  pm.expect(body.stream_id).to.eql(pm.collectionVariables.get('streamId'));",
            "  pm.expect(body.stopped).to.eql(false);",
            "  pm.expect(body.status).to.eql('complete');",
            "});",
        ],
    ),
    (
        "streamMessage:think",
        "Ask a thinking model to think (SSE)",
        [
            "const events = pm.response.text().split('\\n\\n').filter((b) => b.startsWith('data: ')).map((b) => JSON.parse(b.slice(6)));",
            "pm.test('200: thinking events before the answer (404 unknown_model: set thinkingModel)', () => {",
            "  if (pm.response.code === 404) {",
            "    pm.expect(pm.response.json().error.code).to.eql('unknown_model');",
            "    return;",
            "  }",
            "  pm.response.to.have.status(200);",
            "  const kinds = events.map((e) => e.type);",
            "  pm.expect(kinds).to.include('thinking');",
            "  pm.expect(kinds.indexOf('thinking')).to.be.below(kinds.indexOf('chunk'));",
            "  pm.expect(kinds[kinds.length - 1]).to.eql('done');",
            "});",
        ],
    ),
    (
        "signedUrl",
        "Image bytes with the signed URL (no token)",
        [
            "pm.test('200 image/jpeg without any credentials', () => {",
            "  pm.response.to.have.status(200);",
            "  pm.expect(pm.response.headers.get('Content-Type')).to.eql('image/jpeg');",
            "  pm.expect(pm.response.headers.get('Cache-Control')).to.include('private');",
            "});",
        ],
    ),
    (
        "storageStats",
        "Storage totals",
        [
            "pm.test('200 with totals', () => {",
            "  pm.response.to.have.status(200);",
            f"  {IS_JSON}",
            "  pm.expect(body.images).to.be.at.least(1);",
            "});",
        ],
    ),
    (
        "listConversations",
        "Your conversations, newest first",
        [
            "pm.test('200 listing the conversation just had', () => {",
            "  pm.response.to.have.status(200);",
            f"  {IS_JSON}",
            "  const ids = body.conversations.map((c) => c.id);",
            "  pm.expect(ids).to.include(pm.collectionVariables.get('conversationId'));",
            "  pm.expect(body.conversations[0].message_count).to.be.at.least(2);",
            "});",
        ],
    ),
    (
        "createChatCompletion",
        "The same question through the OpenAI-compatible API",
        [
            "pm.test('200 chat.completion with an answer', () => {",
            "  pm.response.to.have.status(200);",
            f"  {IS_JSON}",
            "  pm.expect(body.object).to.eql('chat.completion');",
            "  pm.expect(body.choices[0].message.role).to.eql('assistant');",
            "  pm.expect(body.choices[0].message.content).to.be.a('string').and.not.empty;",
            "});",
        ],
    ),
    (
        "streamMessage:structured",
        "Ask for JSON that follows a schema (structured output)",
        [
            "const events = pm.response.text().split('\\n\\n').filter((b) => b.startsWith('data: ')).map((b) => JSON.parse(b.slice(6)));",
            "pm.test('200: the streamed answer is JSON with the schema\\'s fields', () => {",
            "  pm.response.to.have.status(200);",
            "  pm.expect(events[events.length - 1].type).to.eql('done');",
            "  const answer = JSON.parse(events.filter((e) => e.type === 'chunk').map((e) => e.content).join(''));",
            "  pm.expect(answer.subject).to.be.a('string');",
            "  pm.expect(answer.objects).to.be.a('number').and.to.be.at.least(0);",
            "  pm.expect(answer.outdoors).to.be.a('boolean');",
            "});",
        ],
    ),
    (
        "openaiListModels",
        "Models, OpenAI style",
        [
            "pm.test('200 list of models', () => {",
            "  pm.response.to.have.status(200);",
            f"  {IS_JSON}",
            "  pm.expect(body.object).to.eql('list');",
            "  const wanted = pm.collectionVariables.get('model');",
            "  const found = body.data.find((m) => m.id === wanted || m.id.startsWith(wanted + ':'));",
            "  pm.expect(found, 'the model in the list').to.be.an('object');",
            "  pm.collectionVariables.set('openaiModel', found.id);",
            "});",
        ],
    ),
    (
        "openaiRetrieveModel",
        "One model, OpenAI style",
        [
            "pm.test('200 with the model', () => {",
            "  pm.response.to.have.status(200);",
            "  pm.expect(pm.response.json().id).to.eql(pm.collectionVariables.get('openaiModel'));",
            "});",
        ],
    ),
    (
        "deleteConversation",
        "Delete the conversation (its images stay, unlinked)",
        ["pm.test('204 No Content', () => pm.response.to.have.status(204));"],
    ),
    ("deleteImage", "Delete the photo", ["pm.test('204 No Content', () => pm.response.to.have.status(204));"]),
    (
        "getImageMeta",
        "Image record after the delete",
        [
            "pm.test('404 not_found', () => {",
            "  pm.response.to.have.status(404);",
            "  pm.expect(pm.response.json().error.code).to.eql('not_found');",
            "});",
        ],
    ),
]
HEALTH_OPERATIONS = ("livez", "readyz", "metrics")


def operations() -> dict[str, tuple[str, str, str, dict[str, Any]]]:
    """operationId -> (service, path, method, operation) over both documents."""
    found = {}
    for service, (_, document) in SERVICES.items():
        spec = yaml.safe_load((HERE / "openapi" / document).read_text())
        for path, methods in spec["paths"].items():
            for method, operation in methods.items():
                if isinstance(operation, dict) and "operationId" in operation:
                    found[f"{service}:{operation['operationId']}"] = (service, path, method, operation)
    return found


def url_object(variable: str, path: str, query: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A full Postman url (raw plus host/path/query): newman sends only what these parts say."""
    concrete = path
    for name, value in PATH_VALUES.items():
        concrete = concrete.replace("{" + name + "}", value)
    raw = "{{" + variable + "}}" + concrete
    if query:
        raw += "?" + "&".join(f"{q['key']}={q['value']}" for q in query)
    url: dict[str, Any] = {"raw": raw, "host": ["{{" + variable + "}}"], "path": [p for p in concrete.split("/") if p]}
    if query:
        url["query"] = query
    return url


def headers_for(operation: dict[str, Any]) -> list[dict[str, str]]:
    if operation.get("security") == []:
        return []
    headers = [{"key": "Authorization", "value": "Bearer {{serviceToken}}"}]
    parameters = operation.get("parameters", [])
    wants_user = any(p.get("$ref", "").endswith("/UserId") or p.get("name") == "X-User-Id" for p in parameters)
    if wants_user:
        headers.append({"key": "X-User-Id", "value": "{{userId}}"})
    return headers


def item(
    name: str, method: str, headers: list[dict[str, str]], url: dict[str, Any], script: list[str]
) -> dict[str, Any]:
    return {
        "name": name,
        "event": [{"listen": "test", "script": {"type": "text/javascript", "exec": script}}],
        "request": {"method": method.upper(), "header": headers, "url": url},
    }


def step(
    known: dict[str, tuple[str, str, str, dict[str, Any]]], operation_id: str, name: str, script: list[str]
) -> dict[str, Any]:
    if operation_id == "signedUrl":
        query = [{"key": "exp", "value": "{{signedExp}}"}, {"key": "sig", "value": "{{signedSig}}"}]
        return item(name, "get", [], url_object("imageStoreUrl", "/api/images/{image_id}", query), script)
    body = BODIES.get(operation_id)
    operation_id = operation_id.split(":")[0]  # "streamMessage:think": the same operation, another body
    service, path, method, operation = next(v for k, v in known.items() if k.endswith(":" + operation_id))
    request = item(name, method, headers_for(operation), url_object(SERVICES[service][0], path), script)
    if body is not None:
        request["request"]["body"] = body
    return request


def collection() -> dict[str, Any]:
    known = operations()
    walkthrough = [step(known, operation_id, name, script) for operation_id, name, script in STEPS]
    health = [
        item(
            f"{service} {operation['operationId']}",
            method,
            [],
            url_object(SERVICES[service][0], path),
            [f"pm.test('{operation['operationId']} answers 200', () => pm.response.to.have.status(200));"],
        )
        for service, path, method, operation in known.values()
        if operation["operationId"] in HEALTH_OPERATIONS
    ]
    covered = {operation_id.split(":")[0] for operation_id, _, _ in STEPS} | set(HEALTH_OPERATIONS)
    missing = {key for key in known if key.split(":")[1] not in covered}
    if missing:
        raise SystemExit(f"operations with no request in the walkthrough: {sorted(missing)}")
    return {
        "info": {
            "name": "retina",
            "description": "Generated from docs/openapi by docs/generate_postman.py. Run it in order (Postman's "
            "runner or `newman run`): each request's tests assert status and shape and capture the IDs later ones use.",
            "schema": "https://schema.getpostman.com/json/collection/v2.1.0/collection.json",
        },
        "variable": [
            {"key": "imageStoreUrl", "value": "http://127.0.0.1:8081"},
            {"key": "gatewayUrl", "value": "http://127.0.0.1:8082"},
            {"key": "serviceToken", "value": "paste the token retina up printed"},
            {"key": "userId", "value": "alice"},
            {"key": "model", "value": "llava"},
            {"key": "thinkingModel", "value": "qwen3"},
            *(
                {"key": key, "value": ""}
                for key in (
                    "imageId",
                    "signedExp",
                    "signedSig",
                    "streamId",
                    "conversationId",
                    "messageId",
                    "userMessageId",
                    "openaiModel",
                )
            ),
        ],
        "item": [{"name": "walkthrough", "item": walkthrough}, {"name": "health", "item": health}],
    }


def render() -> str:
    return json.dumps(collection(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
