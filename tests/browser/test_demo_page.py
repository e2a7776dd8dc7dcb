"""The /demo chat page end to end in Chromium: live image-store + gateway + the Ollama emulator.

A person's path: open the URL `retina up` prints (token in the fragment), see the models with their
vision badge, attach a photograph (file picker) and another (drag-and-drop), ask, watch the answer
stream in, stop a long answer, reload, and find the history with the images shown from the
image-store's own origin (a cross-origin <img>, so CORS/CORP settings are really exercised).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from aiohttp.test_utils import unused_port
from PIL import Image

from cli.ollama_emulator import OllamaEmulator
from services.image_store.app import create_app as create_store
from services.image_store.settings import load_image_store_settings
from services.vision_gateway.app import create_app as create_gateway
from services.vision_gateway.settings import load_gateway_settings
from tests.conftest import SERVICE_TOKEN
from tests.image_store.images import SKIMAGE_DATA, photo

LONG_REPLY = " ".join(f"word{n}" for n in range(400))

DROP_FILE = """
([name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
  return transfer;
}
"""


def small_jpeg(name: str) -> bytes:
    with Image.open(io.BytesIO(photo(name))) as source:
        image = source.convert("RGB")
        image.thumbnail((160, 160))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


async def start_stack(service_env: dict[str, str], aiohttp_server: Any, emulator: OllamaEmulator) -> tuple[str, str]:
    """Store and gateway on fixed ports, set up the way `retina up` does it."""
    ollama = await aiohttp_server(emulator.make_app())
    store_port, gateway_port = unused_port(), unused_port()
    store_origin, gateway_origin = f"http://127.0.0.1:{store_port}", f"http://127.0.0.1:{gateway_port}"
    env = {
        **service_env,
        "IMAGE_CORS_ALLOWED_ORIGINS": gateway_origin,
        "IMAGE_PUBLIC_BASE_URL": store_origin,
        "OLLAMA_URL": str(ollama.make_url("")).rstrip("/"),
        "IMAGE_STORE_URL": store_origin,
        "DEMO_PAGE_ENABLED": "true",
        "SSE_HEARTBEAT_SECONDS": "0.5",
    }
    await aiohttp_server(create_store(load_image_store_settings(env)), port=store_port)
    await aiohttp_server(create_gateway(load_gateway_settings(env)), port=gateway_port)
    return store_origin, gateway_origin


async def answer_text(page: Any) -> str:
    return await page.locator(".message.assistant .content").last.text_content() or ""


async def test_demo_page_attach_ask_stream_stop_and_history(
    page: Any, service_env: dict[str, str], aiohttp_server: Any, tmp_path: Path
) -> None:
    emulator = OllamaEmulator(chunk_delay=0.02)
    store_origin, gateway_origin = await start_stack(service_env, aiohttp_server, emulator)

    await page.goto(f"{gateway_origin}/demo#token={SERVICE_TOKEN}&user=alice")
    assert "#" not in page.url, "the token is taken out of the address bar"
    llava = page.locator('#models button[data-model="llava:latest"]')
    await llava.wait_for()
    assert await llava.locator(".badge").text_content() == "vision"
    assert await page.locator('#models button[data-model="llama3.2:latest"] .badge').text_content() == "text"
    await llava.click()

    # Attach: a real photograph through the file picker, a second one by drag-and-drop.
    await page.set_input_files("#file-input", str(SKIMAGE_DATA / "chelsea.png"))
    dropped = await page.evaluate_handle(DROP_FILE, ["rocket.jpg", base64.b64encode(small_jpeg("rocket.jpg")).decode()])
    await page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})
    thumbs = page.locator("#attachments img")
    assert await thumbs.count() == 2
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#attachments img')].every(i => i.naturalWidth > 0)"
    )
    await page.screenshot(path=str(tmp_path / "1-attached.png"))

    # Ask: the answer streams in (several reads see it grow before `done`).
    await page.fill("#message", "What is in these pictures?")
    await page.click("#send")
    await page.wait_for_function("() => document.querySelector('.message.assistant .content')?.textContent.length > 0")
    await page.locator(".message.assistant .event.done").wait_for()
    reply = emulator.find("llava:latest").reply
    assert await answer_text(page) == reply
    assert "done: stop" in (await page.locator(".message.assistant .event.done").text_content() or "")
    chat = emulator.chats[-1]
    assert len(chat.images) == 2, "both attachments reached the model"
    assert {image.format for image in chat.images} <= {"JPEG", "PNG"}
    await page.screenshot(path=str(tmp_path / "2-answered.png"))

    # A long answer, seen growing, then stopped with the Stop button.
    emulator.find("llava:latest").reply = LONG_REPLY
    emulator.chunk_delay = 0.03
    await page.fill("#message", "Tell me everything.")
    await page.click("#send")
    await page.wait_for_function(
        "() => document.querySelectorAll('.message.assistant').length === 2"
        " && document.querySelectorAll('.message.assistant')[1].querySelector('.content').textContent.length > 20"
    )
    first_seen = len(await answer_text(page))
    await page.wait_for_function(
        "seen => document.querySelectorAll('.message.assistant .content')[1].textContent.length > seen",
        arg=first_seen,
    )
    assert not await page.locator(".message.assistant").nth(1).locator(".event.done").count(), "still streaming"
    await page.screenshot(path=str(tmp_path / "3-streaming.png"))
    await page.click("#stop")
    done = page.locator(".message.assistant").nth(1).locator(".event.done")
    await done.wait_for()
    assert "done: stopped" in (await done.text_content() or "")
    stopped_text = await answer_text(page)
    assert 0 < len(stopped_text) < len(LONG_REPLY)
    assert LONG_REPLY.startswith(stopped_text.rstrip())
    record = await emulator.wait_for_disconnect()
    assert record.cancelled, "Ollama's generation was cut off"
    await page.screenshot(path=str(tmp_path / "4-stopped.png"))

    # Reload: the history comes back from the gateway, images from the store's own origin.
    await page.reload()
    await page.locator(".message").nth(3).wait_for()
    roles = await page.locator(".message").evaluate_all("nodes => nodes.map(n => n.className)")
    assert roles == ["message user", "message assistant", "message user", "message assistant"]
    history_images = page.locator(".message.user img")
    assert await history_images.count() == 2
    await page.wait_for_function(
        "() => [...document.querySelectorAll('.message.user img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    sources = await history_images.evaluate_all("nodes => nodes.map(n => [n.src, n.naturalWidth])")
    assert all(src.startswith(f"{store_origin}/api/images/") and "sig=" in src for src, _ in sources), sources
    assert sorted(width for _, width in sources) == sorted([451, 160]), sources
    assert "stopped" in (await page.locator(".message.assistant .meta").nth(1).text_content() or "")
    assert (await page.locator(".message.assistant .content").nth(1).text_content() or "").startswith("word0")
    await page.screenshot(path=str(tmp_path / "5-history.png"), full_page=True)


async def test_demo_page_shows_the_models_thinking_live_and_in_history(
    page: Any, service_env: dict[str, str], aiohttp_server: Any
) -> None:
    """A thinking model's reasoning streams into its own folded box above the answer and comes back
    from the history after a reload, kept apart from the answer text."""
    emulator = OllamaEmulator(chunk_delay=0.01)
    _, gateway_origin = await start_stack(service_env, aiohttp_server, emulator)
    model = emulator.find("qwen3:latest")
    assert model is not None
    assert model.thinking

    await page.goto(f"{gateway_origin}/demo#token={SERVICE_TOKEN}&user=alice")
    await page.locator('#models button[data-model="qwen3:latest"]').click()
    await page.fill("#message", "What is two and two?")
    await page.click("#send")
    await page.locator(".message.assistant .event.done").wait_for()
    assert await page.locator(".message.assistant .thinking-text").text_content() == model.thinking_reply
    assert await answer_text(page) == model.reply, "the answer holds no thinking"
    assert await page.locator(".message.assistant details.thinking").get_attribute("open") is not None

    await page.reload()
    await page.locator(".message.assistant .meta").wait_for()
    assert await page.locator(".message.assistant .thinking-text").text_content() == model.thinking_reply
    assert await page.locator(".message.assistant details.thinking").get_attribute("open") is None, "folded"
    assert await answer_text(page) == model.reply
