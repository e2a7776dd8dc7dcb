"""Memory and admission: one fetch per image content, the prep budget, per-user stream and rate limits.

Against the real stack (image-store, gateway, emulator, PostgreSQL); the store's own metrics
registry counts what the gateway really downloaded.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from PIL import Image

from common.app import REGISTRY_KEY
from services.vision_gateway.admission import PrepBudget, prep_cost
from services.vision_gateway.app import PREP_BUDGET_KEY
from tests.conftest import auth_headers
from tests.vision_gateway.conftest import Stack, ask, big_photo, read_sse

NO_USER_LIMITS = {"VISION_MAX_STREAMS_PER_USER": "0", "VISION_STREAM_RATE_PER_MINUTE": "0"}


def store_sample(stack: Stack, name: str, labels: dict[str, str]) -> float:
    return stack.store.app[REGISTRY_KEY].get_sample_value(name, labels) or 0.0


async def test_forty_concurrent_asks_about_one_image_fetch_and_encode_it_once(
    stack: Stack, db: asyncpg.Connection
) -> None:
    gateway = await stack.make_gateway(**NO_USER_LIMITS)
    photo = big_photo(2400, 1800)
    alices = await stack.upload(photo, user="alice")
    bobs = await stack.upload(photo, user="bob")  # the same bytes, stored once, owned by both

    async def one(user: str, image_id: str) -> tuple[int, str]:
        body = {"message": "What is this?", "model": "llava", "image_ids": [image_id]}
        result = await read_sse(await ask(gateway, body, user=user))
        return result.status, result.events[-1]["type"]

    asks = [one("alice", alices) for _ in range(30)] + [one("bob", bobs) for _ in range(10)]
    intruder = gateway.post(
        "/api/stream-message",
        json={"message": "and this?", "model": "llava", "image_ids": [alices]},
        headers=auth_headers("carol"),
    )
    *results, refused = await asyncio.gather(*asks, intruder)
    assert results == [(200, "done")] * 40
    assert refused.status == 404, "a shared fetch must not share access: carol does not own the image"
    assert (await refused.json())["error"]["code"] == "image_not_found"

    # One GET per image ID is both the owner's access check and the download (no GET /meta any more).
    assert store_sample(stack, "image_store_serve_responses_total", {"status": "200"}) == 2.0
    meta_route = {"method": "GET", "route": "/api/images/{image_id}/meta", "code": "200"}
    assert not store_sample(stack, "http_server_requests_total", meta_route)
    encodes = gateway.app[REGISTRY_KEY].get_sample_value(
        "vision_gateway_image_preparation_duration_seconds_count", {"step": "encode"}
    )
    assert encodes == 1.0
    assert len(stack.emulator.chats) == 40
    assert {chat.images[0].size for chat in stack.emulator.chats} == {(1024, 768)}


async def test_a_full_prep_budget_answers_503_busy_and_writes_nothing(stack: Stack, db: asyncpg.Connection) -> None:
    image_id = await stack.upload(big_photo(1600, 1200))
    budget = stack.gateway.app[PREP_BUDGET_KEY]
    body = {"message": "What is this?", "model": "llava", "image_ids": [image_id]}
    async with budget.reserve(budget.limit_bytes):  # other images fill the budget for the whole wait
        started = time.monotonic()
        response = await ask(stack.gateway, body)
        waited = time.monotonic() - started
    assert response.status == 503
    error = (await response.json())["error"]
    assert error["code"] == "busy"
    assert "busy" in error["message"]
    assert response.headers["Retry-After"] == "2"
    assert waited >= 4.5, "the request waits briefly for room before refusing"
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    fetched = stack.gateway.app[REGISTRY_KEY].get_sample_value(
        "vision_gateway_image_preparation_duration_seconds_count", {"step": "fetch"}
    )
    assert not fetched, "the image's bytes were never read: the budget is taken before the body"
    assert budget.in_use == 0
    rejections = stack.gateway.app[REGISTRY_KEY].get_sample_value("vision_gateway_rejections_total", {"code": "busy"})
    assert rejections == 1.0

    result = await read_sse(await ask(stack.gateway, body))  # room again: the same request now works
    assert (result.status, result.events[-1]["type"]) == (200, "done")
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_per_user_stream_limit_answers_429_and_spares_other_users(stack: Stack, db: asyncpg.Connection) -> None:
    gateway = await stack.make_gateway(VISION_MAX_STREAMS_PER_USER="2", VISION_STREAM_RATE_PER_MINUTE="0")
    stack.emulator.chunk_delay = 0.2
    first = await ask(gateway, {"message": "one", "model": "llava"})
    second = await ask(gateway, {"message": "two", "model": "llava"})
    assert (first.status, second.status) == (200, 200)  # headers sent: both streams are open

    third = await ask(gateway, {"message": "three", "model": "llava"})
    assert third.status == 429
    assert third.headers["Retry-After"] == "1"
    error = (await third.json())["error"]
    assert error["code"] == "rate_limited"
    assert "2 streams at once" in error["message"]
    images_before = await db.fetchval("SELECT count(*) FROM images")
    form = aiohttp.FormData()
    form.add_field("message", "with a photo")
    form.add_field("model", "llava")
    form.add_field("images", io.BytesIO(big_photo(800, 600)), filename="cat.jpg", content_type="image/jpeg")
    upload = await gateway.post("/api/stream-message", data=form, headers=auth_headers("alice"))
    assert upload.status == 429
    assert await db.fetchval("SELECT count(*) FROM images") == images_before, "refused before uploading"

    bobs = await read_sse(await ask(gateway, {"message": "mine", "model": "llava"}, user="bob"))
    assert (bobs.status, bobs.events[-1]["type"]) == (200, "done")
    for response in (first, second):
        assert (await read_sse(response)).events[-1]["type"] == "done"
    user_messages = "SELECT content FROM messages m JOIN conversations c ON c.id = m.conversation_id"
    rows = await db.fetch(f"{user_messages} WHERE c.owner_id = 'alice' AND m.role = 'user' ORDER BY content")
    assert [row["content"] for row in rows] == ["one", "two"]

    again = await read_sse(await ask(gateway, {"message": "four", "model": "llava"}))
    assert (again.status, again.events[-1]["type"]) == (200, "done"), "slots come back when streams end"


async def test_stream_rate_limit_answers_429_with_retry_after(stack: Stack, db: asyncpg.Connection) -> None:
    gateway = await stack.make_gateway(VISION_STREAM_RATE_PER_MINUTE="3", VISION_MAX_STREAMS_PER_USER="0")
    for n in range(3):
        result = await read_sse(await ask(gateway, {"message": f"ask {n}", "model": "llava"}))
        assert result.status == 200
    refused = await ask(gateway, {"message": "ask 3", "model": "llava"})
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert error["code"] == "rate_limited"
    assert "3 stream requests per minute" in error["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 20, refused.headers["Retry-After"]
    assert await db.fetchval("SELECT count(*) FROM messages WHERE role = 'user'") == 3
    counted = gateway.app[REGISTRY_KEY].get_sample_value("vision_gateway_rejections_total", {"code": "rate_limited"})
    assert counted == 1.0

    bobs = await read_sse(await ask(gateway, {"message": "bob asks", "model": "llava"}, user="bob"))
    assert bobs.status == 200, "another user has their own bucket"


async def test_prep_budget_admits_an_oversized_image_alone_and_gives_bytes_back_on_cancel() -> None:
    budget = PrepBudget(100, wait_seconds=0.2)
    async with budget.reserve(1000):  # larger than the budget: admitted when nothing else runs
        assert budget.in_use == 100
    holder = asyncio.get_running_loop().create_future()

    async def hold() -> None:
        async with budget.reserve(60):
            await holder

    task = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    assert budget.in_use == 60
    waiter = asyncio.create_task(budget.reserve(60).__aenter__())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await waiter  # woken by the cancelled holder's release, within its wait
    assert budget.in_use == 60


# VmHWM (peak RSS) of a fresh process; ru_maxrss would carry over pytest's own peak across exec.
PEAK_SCRIPT = """
import sys
from services.vision_gateway.image_prep import prepare_for_model
def peak():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
data = open(sys.argv[1], "rb").read()
prepare_for_model(open(sys.argv[2], "rb").read(), 1024)  # imports and warm-up out of the measurement
before = peak()
prepared = prepare_for_model(data, 1024)
print(peak() - before, prepared.width, prepared.height)
"""


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_prep_cost_covers_the_real_peak_of_preparing_a_40_mp_image(mode: str, tmp_path: Path) -> None:
    """The budget's estimate (from metadata alone) is at least what decoding really takes."""
    width, height = 8000, 5000  # the store's default IMAGE_MAX_PIXELS
    colour = {"RGB": (200, 30, 40), "RGBA": (200, 30, 40, 128), "P": 7}[mode]
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new(mode, (width, height), colour).save(big)
    Image.new("RGB", (64, 64)).save(small)
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(big), str(small)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert run.returncode == 0, run.stderr
    grew, out_width, out_height = (int(n) for n in run.stdout.split())
    assert (out_width, out_height) == (1024, 640)
    estimate = prep_cost(big.stat().st_size, width, height)
    print(f"{mode}: peak +{grew / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB")
    assert grew > 100 * 2**20, "the measurement saw the decode"
    assert grew <= estimate
