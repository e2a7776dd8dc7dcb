"""The OpenAPI documents match the running routes and are valid OpenAPI 3.1."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from openapi_spec_validator import validate

from services.image_store.app import create_app as create_store
from services.image_store.http.handlers import DEFAULT_PAGE_SIZE
from services.image_store.lookup import MAX_PAGE_SIZE
from services.image_store.settings import load_image_store_settings
from services.vision_gateway.app import create_app as create_gateway
from services.vision_gateway.conversations import DEFAULT_PAGE, MAX_PAGE
from services.vision_gateway.settings import load_gateway_settings
from tests.conftest import ROOT

DOCS = ROOT / "docs" / "openapi"


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        path = re.sub(r"\{[^}]+\}", "{}", route.resource.canonical)
        found.add((route.method.lower(), path))
    return found


def documented(spec: dict) -> set[tuple[str, str]]:
    return {
        (method, re.sub(r"\{[^}]+\}", "{}", path))
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "delete", "put")
    }


@pytest.mark.parametrize(
    ("document", "factory", "loader"),
    [
        ("image-store.yaml", create_store, load_image_store_settings),
        ("vision-gateway.yaml", create_gateway, load_gateway_settings),
    ],
)
def test_document_is_valid_and_matches_routes(
    document: str, factory, loader, service_env: dict[str, str], tmp_path: Path
) -> None:
    spec = yaml.safe_load((DOCS / document).read_text())
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    app = factory(loader(service_env))
    assert routes_of(app) == documented(spec)
    for item in spec["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                for status, response in operation["responses"].items():
                    if status.startswith(("4", "5")) and "$ref" in response:
                        assert response["$ref"] == "#/components/responses/Error"


@pytest.mark.parametrize(
    ("document", "path", "default", "maximum"),
    [
        ("image-store.yaml", "/api/images", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
        ("vision-gateway.yaml", "/api/conversations", DEFAULT_PAGE, MAX_PAGE),
    ],
)
def test_documented_page_parameters_are_the_ones_read(document: str, path: str, default: int, maximum: int) -> None:
    """Each list endpoint documents the limit and cursor common/http/paging.py reads with its values."""
    spec = yaml.safe_load((DOCS / document).read_text())
    paged = {
        (route, method): {p["name"]: p for p in operation.get("parameters", []) if "name" in p}
        for route, item in spec["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and any(p.get("name") == "limit" for p in operation.get("parameters", []))
    }
    assert set(paged) == {(path, "get")}
    params = paged[path, "get"]
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}
    assert params["cursor"]["schema"]["minLength"] == 1


def test_postman_collection_is_generated_and_has_the_main_flows() -> None:
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("generate_postman", ROOT / "docs" / "generate_postman.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "docs" / "retina.postman_collection.json").read_text()
    assert committed == module.render(), "stale: run docs/generate_postman.py"
    collection = json.loads(committed)
    walkthrough = collection["item"][0]["item"]
    names = [item["name"] for item in walkthrough]
    order = [
        "Upload a photo",
        "Image record",
        "Ask about the photo (SSE)",
        "Conversation history",
        "Stop the (finished) stream",
        "Image bytes with the signed URL (no token)",
        "Delete the photo",
    ]
    assert [name for name in names if name in order] == order
    for folder in collection["item"]:
        for item in folder["item"]:
            url = item["request"]["url"]
            # Full url objects: newman sends host/path/query, not `raw` alone ("request url is empty").
            assert url["host"], item["name"]
            assert url["path"], item["name"]
            assert any(e["listen"] == "test" and e["script"]["exec"] for e in item["event"]), item["name"]
    upload = walkthrough[0]["request"]
    assert upload["body"]["formdata"][0] == {"key": "file", "type": "file", "src": module.PHOTO}
    assert (ROOT / "docs" / module.PHOTO).is_file()
    assert {h["key"] for h in upload["header"]} == {"Authorization", "X-User-Id"}
    signed = next(item for item in walkthrough if "signed URL" in item["name"])["request"]
    assert signed["header"] == []
    assert {q["key"] for q in signed["url"]["query"]} == {"exp", "sig"}
    ask = next(item for item in walkthrough if item["name"].startswith("Ask"))["request"]
    assert json.loads(ask["body"]["raw"])["image_ids"] == ["{{imageId}}"]
