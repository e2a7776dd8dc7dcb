"""Issue 8 item 5: decompression bombs uploaded together against the real service process.

Two 34-byte lossless WebP files declaring 8000x5000 (exactly IMAGE_MAX_PIXELS) used to add
1.3 GiB to the image-store's processes, over the pod's 1 Gi limit. With the decode budget the
second waits for the first (or is told to retry), and the whole process tree stays inside the
worst case that tests/deploy/test_memory_budget.py checks against the manifests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from services.image_store.imaging.decode_budget import MIB, worst_case_resident_bytes
from services.image_store.settings import load_image_store_settings
from tests.conftest import auth_headers, base_env
from tests.image_store import images
from tests.image_store.store_process import store_process, tree_rss

BOMBS = 4


class PeakSampler:
    """Samples the resident memory of a process tree every 10 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def upload(session: aiohttp.ClientSession, url: str, data: bytes, user: str) -> tuple[int, dict, str | None]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="bomb.webp", content_type="image/webp")
    async with session.post(f"{url}/api/images", data=form, headers=auth_headers(user)) as response:
        return response.status, await response.json(), response.headers.get("Retry-After")


@pytest.mark.slow
async def test_concurrent_webp_bombs_stay_inside_the_memory_budget(database_url: str, tmp_path: Path) -> None:
    bomb = images.webp_bomb(8000, 5000)
    env = {**base_env(database_url, tmp_path / "images"), "IMAGE_UPLOAD_RATE_PER_MINUTE": "0"}
    settings = load_image_store_settings(env)  # the defaults: 2 workers, 40 MP, the default budget
    assert settings.max_pixels == 8000 * 5000
    worst_case = worst_case_resident_bytes(
        workers=settings.decode_workers, budget_bytes=settings.decode_budget_bytes, max_pixels=settings.max_pixels
    )
    with store_process(env, tmp_path / "store.log") as (process, url):
        await asyncio.sleep(1)  # let the workers settle after warm-up
        idle = tree_rss(process.pid)
        started = time.monotonic()
        with PeakSampler(process.pid) as sampler:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
                results = await asyncio.gather(*(upload(session, url, bomb, f"user{i}") for i in range(BOMBS)))
        elapsed = time.monotonic() - started
    statuses = sorted(status for status, _, _ in results)
    print(
        f"\n{BOMBS} x {len(bomb)}-byte WebP declaring 8000x5000: statuses {statuses}; "
        f"idle {idle / MIB:.0f} MiB, peak {sampler.peak / MIB:.0f} MiB (+{(sampler.peak - idle) / MIB:.0f} MiB), "
        f"model worst case {worst_case / MIB:.0f} MiB; {elapsed:.1f} s"
    )
    assert set(statuses) <= {201, 503}, results
    assert 201 in statuses, "a bomb within the limits is still accepted, one at a time"
    for status, body, retry_after in results:
        if status == 503:
            assert body["error"]["code"] == "busy", body
            assert retry_after is not None
            assert int(retry_after) > 0
    assert sampler.peak <= worst_case, "the process tree exceeded the memory model the manifests are checked against"
    assert sampler.peak < shipped_memory_limit(), "over the shipped pod limit (deploy/k8s/base/image-store.yaml)"


def shipped_memory_limit() -> int:
    """The image-store container's memory limit in the base manifest, in bytes."""
    from tests.deploy.helpers import named, pod_spec, render
    from tests.deploy.test_memory_budget import quantity_bytes

    [container] = pod_spec(named(render("base"), "Deployment", "retina-image-store"))["containers"]
    return quantity_bytes(container["resources"]["limits"]["memory"])
