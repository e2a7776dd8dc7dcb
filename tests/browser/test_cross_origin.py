"""In Chromium: a page on another origin reads a signed image's pixels; an unlisted origin cannot.

The image-store runs on one port, two tiny "front-end" servers on two others (different ports are
different origins). Only the first is in IMAGE_CORS_ALLOWED_ORIGINS.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import unused_port
from PIL import Image

from services.image_store.app import create_app as create_store
from services.image_store.settings import load_image_store_settings
from tests.conftest import auth_headers
from tests.image_store.images import photo

FRONT_PAGE = "<!doctype html><html><head><title>front-end</title></head><body><h1>front-end</h1></body></html>"

# Reads the image with fetch() (bytes → bitmap → canvas → pixels) and with <img crossorigin> drawn
# on a canvas (getImageData throws on a tainted canvas), then sends If-None-Match, which is not a
# CORS-safelisted header, so the browser must pass a preflight first.
READ_PIXELS = """
async (url) => {
  const result = {};
  try {
    const response = await fetch(url);
    result.status = response.status;
    result.etag = response.headers.get("ETag");
    result.contentLength = response.headers.get("Content-Length");
    result.disposition = response.headers.get("Content-Disposition");
    const bitmap = await createImageBitmap(await response.blob());
    const canvas = Object.assign(document.createElement("canvas"), { width: bitmap.width, height: bitmap.height });
    const context = canvas.getContext("2d");
    context.drawImage(bitmap, 0, 0);
    result.size = [bitmap.width, bitmap.height];
    result.probes = [[0, 0], [7, 11], [bitmap.width >> 1, bitmap.height >> 1], [bitmap.width - 1, bitmap.height - 1]];
    result.pixels = result.probes.map(([x, y]) => Array.from(context.getImageData(x, y, 1, 1).data.slice(0, 3)));
    document.body.append(canvas);
  } catch (error) {
    result.fetchError = String(error);
    return result;
  }
  const img = new Image();
  img.crossOrigin = "anonymous";
  img.src = url;
  await img.decode();
  const canvas = Object.assign(document.createElement("canvas"), { width: 4, height: 4 });
  canvas.getContext("2d").drawImage(img, 0, 0);
  result.imgPixel = Array.from(canvas.getContext("2d").getImageData(0, 0, 1, 1).data.slice(0, 3));
  const plain = new Image(); // no crossorigin: a no-cors load, governed by Cross-Origin-Resource-Policy
  plain.src = url + "&plain";
  result.plainWidth = await plain.decode().then(() => plain.naturalWidth, () => 0);
  const again = await fetch(url, { headers: { "If-None-Match": result.etag } });
  result.conditionalStatus = again.status;
  const ranged = await fetch(url, { headers: { Range: "bytes=0-99" } });
  result.rangeStatus = ranged.status;
  result.contentRange = ranged.headers.get("Content-Range");
  return result;
}
"""

STRANGER_READS = """
async (url) => {
  const outcome = {};
  try { await fetch(url); outcome.fetch = "read"; } catch (error) { outcome.fetch = String(error); }
  try {
    await fetch(url, { headers: { "If-None-Match": '"x"' } });
    outcome.preflighted = "read";
  } catch (error) { outcome.preflighted = String(error); }
  const img = new Image();
  img.crossOrigin = "anonymous";
  img.src = url + "&cors-mode";
  outcome.img = await img.decode().then(() => "loaded", () => "refused");
  return outcome;
}
"""


async def front_end(aiohttp_server: Any) -> Any:
    async def index(request: web.Request) -> web.Response:
        del request
        return web.Response(text=FRONT_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return await aiohttp_server(app)


async def test_allowed_origin_reads_pixels_and_unlisted_origin_is_refused(
    browser: Any, page: Any, service_env: dict[str, str], aiohttp_server: Any, tmp_path: Path
) -> None:
    allowed = await front_end(aiohttp_server)
    stranger = await front_end(aiohttp_server)
    allowed_origin = f"http://127.0.0.1:{allowed.port}"
    store_port = unused_port()
    store_origin = f"http://127.0.0.1:{store_port}"
    settings = load_image_store_settings(
        {**service_env, "IMAGE_CORS_ALLOWED_ORIGINS": allowed_origin, "IMAGE_PUBLIC_BASE_URL": store_origin}
    )
    await aiohttp_server(create_store(settings), port=store_port)

    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{store_origin}/api/images",
            data=photo("chelsea.png"),
            headers={**auth_headers(), "Content-Type": "image/png"},
        ) as response:
            record = await response.json()
            assert response.status == 201, record
        async with session.get(f"{store_origin}/api/images/{record['id']}", headers=auth_headers()) as response:
            stored = Image.open(io.BytesIO(await response.read())).convert("RGB")
    signed_url = record["url"]
    assert signed_url.startswith(f"{store_origin}/api/images/"), "IMAGE_PUBLIC_BASE_URL makes it absolute"

    await page.goto(f"{allowed_origin}/")
    result = await page.evaluate(READ_PIXELS, signed_url)
    await page.screenshot(path=str(tmp_path / "allowed-origin.png"))
    assert "fetchError" not in result, (result, page.console_messages)
    assert result["status"] == 200
    assert result["etag"] == f'"{record["sha256"]}"', "ETag is exposed to the page"
    assert int(result["contentLength"]) == record["size_bytes"]
    assert result["disposition"].startswith("inline")
    assert result["size"] == [record["width"], record["height"]] == list(stored.size)
    for (x, y), pixel in zip(result["probes"], result["pixels"], strict=True):
        expected = stored.getpixel((x, y))
        assert all(abs(a - b) <= 2 for a, b in zip(pixel, expected, strict=True)), ((x, y), pixel, expected)
    assert all(abs(a - b) <= 2 for a, b in zip(result["imgPixel"], stored.getpixel((0, 0)), strict=True))
    assert result["plainWidth"] == record["width"], "CORP cross-origin (the default with origins) lets <img> show it"
    assert result["conditionalStatus"] == 304, "the If-None-Match preflight passed and the 304 is readable"
    assert result["rangeStatus"] == 206
    assert result["contentRange"] == f"bytes 0-99/{record['size_bytes']}"

    stranger_page = await page.context.new_page()
    console: list[str] = []
    stranger_page.on("console", lambda message: console.append(message.text))
    await stranger_page.goto(f"http://127.0.0.1:{stranger.port}/")
    outcome = await stranger_page.evaluate(STRANGER_READS, signed_url)
    await stranger_page.screenshot(path=str(tmp_path / "unlisted-origin.png"))
    assert outcome["fetch"].startswith("TypeError"), outcome
    assert outcome["preflighted"].startswith("TypeError"), outcome
    assert outcome["img"] == "refused", outcome
    assert any("blocked by CORS policy" in line for line in console), console
