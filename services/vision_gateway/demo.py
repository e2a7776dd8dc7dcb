"""The demo chat page (`GET /demo`, only when DEMO_PAGE_ENABLED=true): plain files shipped in the package.

It exists so a person (and the browser tests) can try the whole path — upload, streamed answer,
stop, history with images from the image-store's own origin — with nothing but a browser. It is
not a product front-end: in production a chat backend sits between browsers and these services.
The service token is typed into the page or carried in the URL fragment, which browsers never
send to a server, so it does not reach access logs.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from common.errors import NotFound

DEMO_DIR = Path(__file__).resolve().parent / "demo_page"
ASSET_TYPES = {"demo.js": "text/javascript", "demo.css": "text/css"}

# The page loads only its own files and talks only to this gateway; images come from wherever the
# image-store's signed URLs point (another origin), hence the open img-src.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' blob: http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


DEMO_PAGE_KEY = web.AppKey("demo_page", bytes)
# index.html's file picker names this placeholder; the page is served with the types the store accepts.
ACCEPT_PLACEHOLDER = 'accept="IMAGE_ALLOWED_TYPES"'


def render_page(allowed_types: frozenset[str]) -> bytes:
    """index.html with the file picker offering only IMAGE_ALLOWED_TYPES (read once, at start-up)."""
    page = (DEMO_DIR / "index.html").read_text()
    return page.replace(ACCEPT_PLACEHOLDER, f'accept="{",".join(sorted(allowed_types))}"').encode()


async def demo_page(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DEMO_PAGE_KEY], headers={**PAGE_HEADERS, "Content-Type": "text/html"})


async def demo_asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    content_type = ASSET_TYPES.get(name)
    if content_type is None:
        raise NotFound("no such route")
    return web.FileResponse(DEMO_DIR / name, headers={**PAGE_HEADERS, "Content-Type": content_type})


def add_demo_routes(app: web.Application, allowed_types: frozenset[str]) -> None:
    app[DEMO_PAGE_KEY] = render_page(allowed_types)
    app.router.add_get("/demo", demo_page, name="demo")
    app.router.add_get("/demo/{name}", demo_asset, name="demo_asset")
