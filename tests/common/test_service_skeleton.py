"""What every service shares: JSON errors, request IDs, health, metrics (against real Postgres)."""

from __future__ import annotations

import json
import logging
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from common.app import create_service_app
from services.image_store.app import create_app as create_image_store
from services.image_store.settings import ImageStoreSettings
from services.vision_gateway.app import create_app as create_gateway
from tests.conftest import auth_headers


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internal detail")


@pytest.fixture
async def client(aiohttp_client, store_settings: ImageStoreSettings) -> TestClient:
    app = create_service_app(service="test_service", settings=store_settings.common)
    app.router.add_get("/boom", boom)
    return await aiohttp_client(app)


async def test_unknown_route_is_json_404(client: TestClient) -> None:
    response = await client.get("/no/such/thing")
    assert response.status == 404
    assert response.content_type == "application/json"
    body = await response.json()
    assert body == {"error": {"code": "not_found", "message": "no such route"}}


async def test_wrong_method_is_json_405_with_allow(client: TestClient) -> None:
    response = await client.post("/livez")
    assert response.status == 405
    body = await response.json()
    assert body["error"]["code"] == "method_not_allowed"
    assert "POST" in body["error"]["message"]
    assert "GET" in response.headers["Allow"]


async def test_crash_is_json_500_with_request_id_and_no_traceback(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    response = await client.get("/boom", headers={"X-Request-ID": "req-abc.123"})
    assert response.status == 500
    body = await response.json()
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["request_id"] == "req-abc.123"
    assert "req-abc.123" in body["error"]["message"]
    assert "secret internal detail" not in json.dumps(body)
    assert "Traceback" not in json.dumps(body)
    assert response.headers["X-Request-ID"] == "req-abc.123"
    json_formatter = logging.getLogger().handlers[0].formatter
    assert json_formatter is not None
    lines = [json.loads(json_formatter.format(r)) for r in caplog.records if r.levelno >= logging.ERROR]
    crash = next(line for line in lines if line["event"] == "unhandled_error")
    assert crash["request_id"] == "req-abc.123", "the log line carries the request ID"
    assert "Traceback" in crash["exception"], "the traceback goes to the log"
    assert "secret internal detail" in crash["exception"]


async def test_request_id_is_generated_when_missing_or_unsafe(client: TestClient) -> None:
    generated = await client.get("/livez")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    hostile = await client.get("/livez", headers={"X-Request-ID": "x\u2028injected log line"})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["X-Request-ID"])


@pytest.mark.postgres_paths
async def test_livez_and_readyz_against_a_migrated_database(client: TestClient) -> None:
    live = await client.get("/livez")
    assert live.status == 200
    assert await live.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["database"].startswith("ok")
    assert body["checks"]["schema"].startswith("ok")


@pytest.mark.postgres_paths
async def test_readyz_fails_when_the_schema_is_behind(
    aiohttp_client, store_settings: ImageStoreSettings, empty_database_url: str
) -> None:
    settings = store_settings.common.model_copy(update={"database_url": SecretStr(empty_database_url)})
    client = await aiohttp_client(create_service_app(service="test_service", settings=settings))
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"].startswith("ok")
    pending = len([p for p in settings.migrations_path.glob("*.sql") if not p.name.endswith(".rollback.sql")])
    assert pending >= 6  # 0001..0006 at least: the count comes from the directory, not from this test
    assert body["checks"]["schema"] == f"failed: {pending} migration(s) not applied: run `retina migrate`"


async def test_metrics_use_route_templates_not_paths(client: TestClient) -> None:
    await client.get("/livez")
    await client.get("/no/such/thing/123")
    await client.get("/boom")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = await response.text()
    assert 'http_server_requests_total{code="200",method="GET",route="/livez"} 1.0' in text
    assert 'http_server_requests_total{code="404",method="GET",route="unmatched"} 1.0' in text
    assert 'http_server_requests_total{code="500",method="GET",route="/boom"} 1.0' in text
    assert "/no/such/thing/123" not in text
    assert 'test_service_build_info{version="' in text
    assert "process_resident_memory_bytes" in text
    assert "_created" not in text


@pytest.mark.parametrize("factory", [create_image_store, create_gateway])
async def test_both_services_start_with_health_and_metrics(
    aiohttp_client, service_env: dict[str, str], factory
) -> None:
    from services.image_store.settings import load_image_store_settings
    from services.vision_gateway.settings import load_gateway_settings

    loader = load_image_store_settings if factory is create_image_store else load_gateway_settings
    client = await aiohttp_client(factory(loader(service_env)))
    for path in ("/livez", "/readyz", "/metrics"):
        response = await client.get(path)
        assert response.status == 200, (path, await response.text())


async def test_public_paths_need_no_token_but_errors_stay_json(client: TestClient) -> None:
    response = await client.get("/metrics", headers=auth_headers())
    assert response.status == 200
    response = await client.get("/livez", headers={"Authorization": "Bearer wrong"})
    assert response.status == 200
