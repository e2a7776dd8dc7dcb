"""CORS, Cross-Origin-Resource-Policy and absolute URLs on the image-store, checked over HTTP.

The same behaviour is checked in a real browser by tests/browser/test_cross_origin.py; these tests
pin the exact headers so a regression names the header that changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient
from yarl import URL

from tests.conftest import auth_headers
from tests.image_store.conftest import photo, upload

FRONT_END = "http://127.0.0.1:5173"
STRANGER = "http://evil.example"


async def signed_path(client: TestClient) -> str:
    response = await upload(client, photo("chelsea.png"), filename="chelsea.png")
    assert response.status == 201, await response.text()
    return (await response.json())["url"]


def vary_values(headers: Any) -> set[str]:
    return {item.strip().lower() for value in headers.getall("Vary", []) for item in value.split(",")}


async def test_allowed_origin_reads_bytes_with_exposed_headers_and_no_credentials(
    client_for: Callable[..., Awaitable[TestClient]],
) -> None:
    client = await client_for(IMAGE_CORS_ALLOWED_ORIGINS=f"{FRONT_END}, https://b.test/")
    url = await signed_path(client)
    response = await client.get(url, headers={"Origin": FRONT_END})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == FRONT_END
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"etag", "content-range", "content-length", "content-disposition"} <= exposed
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "origin" in vary_values(response.headers)
    assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin", "default once an origin is configured"

    ranged = await client.get(url, headers={"Origin": "https://b.test", "Range": "bytes=0-9"})
    assert ranged.status == 206
    assert ranged.headers["Access-Control-Allow-Origin"] == "https://b.test", "trailing slash in the setting ignored"
    assert len(await ranged.read()) == 10

    etag = response.headers["ETag"]
    cached = await client.get(url, headers={"Origin": FRONT_END, "If-None-Match": etag})
    assert cached.status == 304
    assert cached.headers["Access-Control-Allow-Origin"] == FRONT_END


async def test_preflight_allows_range_and_conditional_headers_for_listed_origins_only(
    client_for: Callable[..., Awaitable[TestClient]],
) -> None:
    client = await client_for(IMAGE_CORS_ALLOWED_ORIGINS=FRONT_END)
    url = await signed_path(client)
    preflight = {
        "Origin": FRONT_END,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "range, if-none-match",
    }
    response = await client.options(url, headers=preflight)
    assert response.status == 200, await response.text()
    assert response.headers["Access-Control-Allow-Origin"] == FRONT_END
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {"range", "if-none-match"}
    assert "GET" in response.headers["Access-Control-Allow-Methods"]
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "origin" in vary_values(response.headers)

    refused = await client.options(url, headers={**preflight, "Origin": STRANGER})
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "forbidden"
    assert "Access-Control-Allow-Origin" not in refused.headers

    bad_header = await client.options(url, headers={**preflight, "Access-Control-Request-Headers": "x-evil"})
    assert bad_header.status == 403
    assert "Access-Control-Allow-Origin" not in bad_header.headers


async def test_unlisted_origin_gets_no_cors_headers_but_vary(
    client_for: Callable[..., Awaitable[TestClient]],
) -> None:
    client = await client_for(IMAGE_CORS_ALLOWED_ORIGINS=FRONT_END)
    url = await signed_path(client)
    response = await client.get(url, headers={"Origin": STRANGER})
    assert response.status == 200, "the bytes are served; the browser withholds them from the page"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "origin" in vary_values(response.headers), "a cached copy must not serve another origin"

    missing = await client.get(
        f"/api/images/{'0' * 8}-0000-4000-8000-{'0' * 12}?exp=1&sig=x", headers={"Origin": FRONT_END}
    )
    assert missing.status == 404
    assert missing.headers["Access-Control-Allow-Origin"] == FRONT_END, "a page can read why its image failed"


async def test_no_origins_means_no_cors_at_all(
    client_for: Callable[..., Awaitable[TestClient]],
) -> None:
    client = await client_for()
    url = await signed_path(client)
    response = await client.get(url, headers={"Origin": FRONT_END})
    assert response.status == 200
    assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    assert response.headers["Cross-Origin-Resource-Policy"] == "same-site"
    preflight = await client.options(url, headers={"Origin": FRONT_END, "Access-Control-Request-Method": "GET"})
    assert preflight.status == 405


async def test_other_routes_stay_without_cors(
    client_for: Callable[..., Awaitable[TestClient]],
) -> None:
    """Only the byte-serving route is for browsers; metadata and uploads need the service token."""
    client = await client_for(IMAGE_CORS_ALLOWED_ORIGINS=FRONT_END)
    response = await client.get("/api/images", headers={**auth_headers(), "Origin": FRONT_END})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = await client.options(
        "/api/images", headers={"Origin": FRONT_END, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 405


async def test_resource_policy_setting_wins(
    client_for: Callable[..., Awaitable[TestClient]],
) -> None:
    client = await client_for(
        IMAGE_CORS_ALLOWED_ORIGINS=FRONT_END,
        IMAGE_CROSS_ORIGIN_RESOURCE_POLICY="same-origin",
    )
    url = await signed_path(client)
    response = await client.head(url)
    assert response.status == 200
    assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin"


async def test_public_base_url_makes_every_url_absolute(
    client_for: Callable[..., Awaitable[TestClient]],
) -> None:
    base = "https://images.example.com/store"
    client = await client_for(IMAGE_PUBLIC_BASE_URL=base + "/")
    response = await upload(client, photo("chelsea.png"))
    assert response.status == 201
    record = await response.json()
    assert record["url"].startswith(f"{base}/api/images/{record['id']}?exp=")
    assert response.headers["Location"] == f"{base}/api/images/{record['id']}"

    meta = await (await client.get(f"/api/images/{record['id']}/meta", headers=auth_headers())).json()
    listing = await (await client.get("/api/images", headers=auth_headers())).json()
    assert meta["url"].startswith(base + "/")
    assert all(image["url"].startswith(base + "/") for image in listing["images"])

    # The absolute URL's path and query work against this server (a proxy maps the prefix).
    signed = URL(record["url"])
    served = await client.get(signed.path.removeprefix("/store") + "?" + signed.query_string)
    assert served.status == 200
    assert await served.read()


async def test_without_public_base_url_urls_stay_relative(
    client_for: Callable[..., Awaitable[TestClient]],
) -> None:
    client = await client_for()
    response = await upload(client, photo("chelsea.png"))
    record = await response.json()
    assert record["url"].startswith(f"/api/images/{record['id']}?exp=")
    assert response.headers["Location"] == f"/api/images/{record['id']}"


async def test_preflights_are_not_counted_as_served_images(
    client_for: Callable[..., Awaitable[TestClient]],
) -> None:
    client = await client_for(IMAGE_CORS_ALLOWED_ORIGINS=FRONT_END)
    url = await signed_path(client)
    preflight = {"Origin": FRONT_END, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"}
    for _ in range(3):
        assert (await client.options(url, headers=preflight)).status == 200
    assert (await client.get(url, headers={"Origin": FRONT_END})).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'image_store_serve_responses_total{status="200"} 1.0' in metrics


async def test_a_refused_preflight_says_why(
    client_for: Callable[..., Awaitable[TestClient]],
) -> None:
    client = await client_for(IMAGE_CORS_ALLOWED_ORIGINS=FRONT_END)
    url = await signed_path(client)
    refused = await client.options(url, headers={"Origin": STRANGER, "Access-Control-Request-Method": "GET"})
    assert refused.status == 403
    error = (await refused.json())["error"]
    assert error["code"] == "forbidden"
    assert error["message"] == (
        f"CORS preflight request failed: request method 'GET' is not allowed for '{STRANGER}' origin"
    )
    header = await client.options(
        url,
        headers={
            "Origin": FRONT_END,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-evil",
        },
    )
    assert (await header.json())["error"]["message"] == "CORS preflight request failed: headers are not allowed: X-EVIL"
