"""What the gateway gives browsers: image URLs in the history, the /demo page, and CORS for /api."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import auth_headers
from tests.image_store.conftest import photo
from tests.vision_gateway.conftest import Stack, ask, read_sse

FRONT_END = "http://127.0.0.1:5173"


async def conversation_with_image(stack: Stack) -> tuple[str, str]:
    image_id = await stack.upload(photo("chelsea.png"), content_type="image/png")
    result = await read_sse(
        await ask(stack.gateway, {"message": "What is this?", "model": "llava", "image_ids": [image_id]})
    )
    assert result.of("done"), result.events
    return result.events[0]["conversation_id"], image_id


async def history(client: TestClient, conversation_id: str, user: str = "alice") -> list[dict]:
    response = await client.get(f"/api/conversations/{conversation_id}/messages", headers=auth_headers(user))
    assert response.status == 200, await response.text()
    return (await response.json())["messages"]


async def test_history_carries_signed_urls_a_browser_can_load_without_a_token(stack: Stack) -> None:
    conversation_id, image_id = await conversation_with_image(stack)
    user, assistant = await history(stack.gateway, conversation_id)
    assert user["image_ids"] == [image_id], "the existing field is unchanged"
    [image] = user["images"]
    assert image["id"] == image_id
    assert image["url"].startswith(f"/api/images/{image_id}?exp="), "relative: the store has no IMAGE_PUBLIC_BASE_URL"
    assert assistant["images"] == []
    async with aiohttp.ClientSession() as session, session.get(str(stack.store.make_url(image["url"]))) as response:
        assert response.status == 200, "the signed URL alone opens the image"
        assert response.content_type == "image/png"
        assert await response.read()


async def test_history_images_gone_from_the_store_have_no_url(stack: Stack) -> None:
    conversation_id, image_id = await conversation_with_image(stack)
    async with (
        aiohttp.ClientSession() as session,
        session.delete(str(stack.store.make_url(f"/api/images/{image_id}")), headers=auth_headers()) as response,
    ):
        assert response.status == 204
    user, _ = await history(stack.gateway, conversation_id)
    assert user["images"] == [{"id": image_id, "url": None}]
    assert user["has_images"] is True


async def test_history_still_answers_when_the_store_is_down(stack: Stack) -> None:
    conversation_id, image_id = await conversation_with_image(stack)
    await stack.store.close()
    user, assistant = await history(stack.gateway, conversation_id)
    assert user["images"] == [{"id": image_id, "url": None}]
    assert assistant["content"], "the text of the conversation is still there"


async def test_demo_page_is_off_by_default(stack: Stack) -> None:
    response = await stack.gateway.get("/demo")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_demo_page_and_its_assets_when_enabled(stack: Stack) -> None:
    client = await stack.make_gateway(DEMO_PAGE_ENABLED="true")
    page = await client.get("/demo")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert '<script src="/demo/demo.js"' in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
    script = await client.get("/demo/demo.js")
    assert script.status == 200
    assert script.content_type == "text/javascript"
    assert "/api/stream-message" in await script.text()
    style = await client.get("/demo/demo.css")
    assert style.content_type == "text/css"
    for name in ("secret.txt", "..%2Fdemo.py", "index.html.bak"):
        missing = await client.get(f"/demo/{name}")
        assert missing.status == 404, name


@pytest.mark.parametrize(
    ("allowed", "offered"),
    [
        (None, "image/jpeg,image/png,image/webp"),
        ("image/png", "image/png"),
        ("image/gif, image/PNG", "image/gif,image/png"),
    ],
)
async def test_the_demo_file_picker_offers_only_the_types_the_store_accepts(
    stack: Stack, allowed: str | None, offered: str
) -> None:
    """IMAGE_ALLOWED_TYPES is the store's rule; the page's file picker names exactly those types."""
    overrides = {"DEMO_PAGE_ENABLED": "true", **({"IMAGE_ALLOWED_TYPES": allowed} if allowed else {})}
    client = await stack.make_gateway(**overrides)
    html = await (await client.get("/demo")).text()
    assert f'id="file-input" type="file" accept="{offered}"' in html
    assert "IMAGE_ALLOWED_TYPES" not in html


async def test_gateway_cors_preflight_for_listed_origins_only(stack: Stack) -> None:
    client = await stack.make_gateway(GATEWAY_CORS_ALLOWED_ORIGINS=FRONT_END)
    preflight = {
        "Origin": FRONT_END,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-user-id",
    }
    allowed = await client.options("/api/stream-message", headers=preflight)
    assert allowed.status == 200, await allowed.text()
    assert allowed.headers["Access-Control-Allow-Origin"] == FRONT_END
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    assert "Origin" in allowed.headers["Vary"]
    refused = await client.options("/api/stream-message", headers={**preflight, "Origin": "http://evil.example"})
    assert refused.status == 403
    assert "Access-Control-Allow-Origin" not in refused.headers

    models = await client.get("/api/models", headers={**auth_headers(), "Origin": FRONT_END})
    assert models.status == 200
    assert models.headers["Access-Control-Allow-Origin"] == FRONT_END
    assert "X-Request-ID" in models.headers["Access-Control-Expose-Headers"]

    plain = await stack.gateway.options("/api/stream-message", headers=preflight)
    assert plain.status == 405, "no GATEWAY_CORS_ALLOWED_ORIGINS, no CORS"
    no_cors = await stack.gateway.get("/api/models", headers={**auth_headers(), "Origin": FRONT_END})
    assert "Access-Control-Allow-Origin" not in no_cors.headers
