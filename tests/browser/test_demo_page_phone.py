"""The /demo chat page on a phone, in Chromium with a phone's viewport (mobile, touch).

At 390×844 and 360×740: no horizontal scroll, every visible box inside the viewport (composer, Stop,
the attached photograph in the conversation), the models list reachable behind its menu, and an
answer that streams into a bubble wide enough to read. The 390×844 run leaves a screenshot; set
RETINA_UPDATE_SCREENSHOTS=1 to write it to docs/images/demo-phone.png (the README's) as well.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cli.ollama_emulator import OllamaEmulator
from tests.browser.test_demo_page import answer_text, start_stack
from tests.conftest import SERVICE_TOKEN
from tests.image_store.images import SKIMAGE_DATA

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "demo-phone.png"

REPLY = (
    "The picture shows a tabby cat sitting on a wooden floor and looking straight at the camera. "
    "Its fur is striped brown and grey, its ears are up and its green eyes are wide open. "
    "Behind it there is a plain wall, and the light comes from the left."
)

# Visible boxes that reach outside the layout viewport (hidden elements have no client rects).
OUTSIDE = """
() => [...document.querySelectorAll('body *')]
  .filter((node) => node.getClientRects().length)
  .map((node) => [node, node.getBoundingClientRect()])
  .filter(([, r]) => r.left < -0.5 || r.right > document.documentElement.clientWidth + 0.5)
  .map(([node, r]) => `${node.tagName.toLowerCase()}#${node.id}.${node.className} ${r.left}..${r.right}`)
"""


@pytest.fixture(params=[(390, 844), (360, 740)], ids=lambda size: f"{size[0]}x{size[1]}")
async def phone(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    width, height = request.param
    context = await browser.new_context(
        viewport={"width": width, "height": height}, is_mobile=True, has_touch=True, device_scale_factor=1
    )
    page = await context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield page
    finally:
        await context.close()


async def box(page: Any, selector: str) -> dict[str, float]:
    rect: dict[str, float] | None = await page.locator(selector).bounding_box()
    assert rect is not None, f"{selector} is not shown"
    return rect


async def assert_fits(page: Any, width: int, what: str) -> None:
    sizes = await page.evaluate(
        "() => [document.scrollingElement.scrollWidth, window.innerWidth, document.documentElement.clientWidth]"
    )
    assert sizes[1] == width, f"{what}: the page was zoomed out to fit something wider ({sizes})"
    assert sizes[0] <= width, f"{what}: horizontal scroll, page {sizes[0]} px wide in a {width} px viewport"
    assert await page.evaluate(OUTSIDE) == [], f"{what}: boxes outside the viewport"


def assert_inside(rect: dict[str, float], outer: dict[str, float], what: str) -> None:
    assert rect["x"] >= outer["x"] - 0.5, (what, rect, outer)
    assert rect["x"] + rect["width"] <= outer["x"] + outer["width"] + 0.5, (what, rect, outer)


async def test_demo_page_on_a_phone(
    phone: Any, service_env: dict[str, str], aiohttp_server: Any, tmp_path: Path
) -> None:
    page = phone
    width = page.viewport_size["width"]
    viewport = {"x": 0, "y": 0, "width": width, "height": page.viewport_size["height"]}
    emulator = OllamaEmulator(chunk_delay=0.03)
    llava = emulator.find("llava:latest")
    assert llava is not None
    llava.reply = REPLY
    _, gateway_origin = await start_stack(service_env, aiohttp_server, emulator)

    await page.goto(f"{gateway_origin}/demo#token={SERVICE_TOKEN}&user=alice")
    await page.locator('#models button[data-model="llava:latest"]').wait_for(state="attached")
    await assert_fits(page, width, "on load")
    for selector in ("#composer", "#message", "#send", "#stop", "#dropzone"):
        assert_inside(await box(page, selector), viewport, selector)
    assert_inside(await box(page, "#stop"), await box(page, "#composer"), "Stop inside the composer")

    # The models are behind a menu that names the current one; opening it shows the list.
    toggle = page.locator("#models-toggle")
    assert await toggle.is_visible(), "a narrow screen shows the models menu button"
    assert "llava:latest" in (await toggle.text_content() or ""), "the menu button names the model in use"
    assert not await page.locator("#models").is_visible(), "the list is folded away at first"
    await toggle.tap()
    assert await toggle.get_attribute("aria-expanded") == "true"
    qwen = page.locator('#models button[data-model="qwen3:latest"]')
    await qwen.wait_for()
    assert_inside(await box(page, '#models button[data-model="qwen3:latest"]'), viewport, "a model in the menu")
    await assert_fits(page, width, "models menu open")
    await page.screenshot(path=str(tmp_path / f"menu-{width}.png"))
    await qwen.tap()
    assert await qwen.get_attribute("aria-pressed") == "true"
    assert not await page.locator("#models").is_visible(), "picking a model folds the menu"
    assert "qwen3:latest" in (await toggle.text_content() or "")
    await toggle.tap()
    await page.locator('#models button[data-model="llava:latest"]').tap()
    assert "llava:latest" in (await toggle.text_content() or "")

    # Attach a real photograph, ask, and watch the answer grow while Stop is live and on screen.
    await page.set_input_files("#file-input", str(SKIMAGE_DATA / "chelsea.png"))
    await page.wait_for_function("() => document.querySelector('#attachments img')?.naturalWidth > 0")
    await assert_fits(page, width, "with an attachment")
    await page.fill("#message", "What is in this picture?")
    await page.locator("#send").tap()
    await page.wait_for_function("() => document.querySelector('.message.assistant .content')?.textContent.length > 10")
    seen = len(await answer_text(page))
    await page.wait_for_function(
        "seen => document.querySelector('.message.assistant .content').textContent.length > seen", arg=seen
    )
    assert await page.locator("#stop").is_enabled(), "Stop is live while the answer streams"
    assert_inside(await box(page, "#stop"), viewport, "Stop while streaming")
    await page.locator(".message.assistant .event.done").wait_for()
    assert await answer_text(page) == REPLY

    await page.wait_for_function(
        "() => [...document.querySelectorAll('.message.user img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    await assert_fits(page, width, "after the answer")
    assert_inside(await box(page, ".message.user img"), viewport, "the sent photograph")
    answer = await box(page, ".message.assistant")
    assert answer["width"] >= 0.6 * width, f"the answer bubble is {answer['width']} px wide of {width}"
    # Readable: lines of several words, not a word per line.
    lines = await page.locator(".message.assistant .content").evaluate(
        "node => node.getBoundingClientRect().height / parseFloat(getComputedStyle(node).lineHeight)"
    )
    assert lines <= len(REPLY.split()) / 4, f"{lines} lines for {len(REPLY.split())} words"

    await page.evaluate("() => window.scrollTo(0, 0)")
    shot = tmp_path / f"demo-phone-{width}.png"
    await page.screenshot(path=str(shot))
    if width == 390 and os.environ.get("RETINA_UPDATE_SCREENSHOTS"):
        # 256 colours: a third of the size, no visible loss for a page of flat colours and one photo.
        with Image.open(shot) as image:
            image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)


async def test_demo_page_fits_every_width_from_phone_to_desktop(
    page: Any, service_env: dict[str, str], aiohttp_server: Any
) -> None:
    """One conversation with a photograph, the window resized from 360 px to desktop: never a
    horizontal scroll; the models menu button below the 40rem breakpoint, the models column above."""
    emulator = OllamaEmulator()
    _, gateway_origin = await start_stack(service_env, aiohttp_server, emulator)
    await page.goto(f"{gateway_origin}/demo#token={SERVICE_TOKEN}&user=alice")
    await page.locator('#models button[data-model="llava:latest"]').click()
    await page.set_input_files("#file-input", str(SKIMAGE_DATA / "astronaut.png"))
    await page.fill("#message", "What is in this picture?")
    await page.click("#send")
    await page.locator(".message.assistant .event.done").wait_for()
    await page.wait_for_function("() => document.querySelector('.message.user img')?.naturalWidth > 0")

    for width in (360, 412, 480, 600, 640, 641, 720, 768, 900, 1024, 1280, 1600):
        await page.set_viewport_size({"width": width, "height": 800})
        await assert_fits(page, width, f"{width} px")
        narrow = width <= 640
        assert await page.locator("#models-toggle").is_visible() == narrow, width
        assert await page.locator("#models").is_visible() != narrow, width
        answer = await box(page, ".message.assistant")
        history = await box(page, "#history")
        assert answer["width"] >= 0.6 * history["width"], width
