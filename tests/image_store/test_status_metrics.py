"""HTTP metrics count the status the client received, not the exception a handler raised."""

from __future__ import annotations

import uuid

from aiohttp.test_utils import TestClient

from common.app import REGISTRY_KEY
from tests.conftest import auth_headers
from tests.image_store.conftest import png, upload


def requests_counted(client: TestClient, route: str, code: int, method: str = "GET") -> float:
    registry = client.server.app[REGISTRY_KEY]
    value = registry.get_sample_value(
        "http_server_requests_total", {"method": method, "route": route, "code": str(code)}
    )
    return value or 0.0


async def test_client_errors_are_counted_under_their_own_status(store_client: TestClient) -> None:
    image = "/api/images/{image_id}"
    missing = f"/api/images/{uuid.uuid4()}"
    assert (await store_client.get(missing, headers={"X-User-Id": "alice"})).status == 401
    assert (await store_client.get(missing, headers=auth_headers())).status == 404
    assert (await store_client.get(missing, headers={**auth_headers(), "X-User-Id": "x" * 500})).status == 400
    refused = await store_client.post(
        "/api/images", data=b"plain text", headers={**auth_headers(), "Content-Type": "text/plain"}
    )
    assert refused.status == 415
    assert (await refused.json())["error"]["code"] == "unsupported_media_type"
    bogus = await upload(store_client, b"<html>not an image</html>", filename="x.png")
    assert bogus.status == 415, await bogus.text()

    assert requests_counted(store_client, image, 401) == 1
    assert requests_counted(store_client, image, 404) == 1
    assert requests_counted(store_client, image, 400) == 1
    assert requests_counted(store_client, "/api/images", 415, "POST") == 2
    for route, method in ((image, "GET"), ("/api/images", "POST")):
        assert requests_counted(store_client, route, 500, method) == 0, "no client mistake is counted as a 500"


async def test_successes_and_upload_outcomes_are_counted(store_client: TestClient) -> None:
    created = await upload(store_client, png())
    assert created.status == 201
    assert requests_counted(store_client, "/api/images", 201, "POST") == 1
    registry = store_client.server.app[REGISTRY_KEY]
    assert registry.get_sample_value("image_store_uploads_total", {"outcome": "stored"}) == 1
    refused = await upload(store_client, b"GIF89a" + b"\x00" * 10, filename="x.gif", content_type="image/gif")
    assert refused.status in (415, 422)
    outcomes = {
        s.labels["outcome"]: s.value
        for metric in registry.collect()
        if metric.name == "image_store_uploads"
        for s in metric.samples
        if s.name == "image_store_uploads_total"
    }
    assert sum(v for k, v in outcomes.items() if k != "stored") == 1, outcomes
    assert outcomes.get("error", 0) == 0, "a refused image is not a server error"
