"""The pebble-backed pool's process handling, observed on the real worker processes: a timeout
kills only the stuck worker, and a worker killed from outside (as the OOM killer would) costs
its task one retry on a fresh worker, not the upload."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from services.image_store.imaging.decode_pool import DecodePool, DecodeTimeout, worker_processes
from services.image_store.imaging.pipeline import ValidationLimits
from tests.image_store import images

LIMITS = ValidationLimits(
    allowed_types=frozenset({"image/png", "image/jpeg", "image/webp"}),
    max_side_px=10000,
    max_pixels=40_000_000,
    max_frames=1,
    reencode=True,
    jpeg_quality=90,
)


def worker_pids(others: set[int] | None = None) -> set[int]:
    """Decode workers among this process's children, less `others`: the workers that were there
    before the pool under test started (the shared ones of tests/conftest.py's decode_processes)."""
    me = psutil.Process()
    pids = {p.pid for p in me.children() if "--multiprocessing-fork" in " ".join(p.cmdline())}
    return pids - (others or set())


async def busy_worker(pids: set[int], within_seconds: float = 20) -> int:
    """The worker whose resident memory shows it decoding the bomb."""
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        for pid in pids:
            if psutil.Process(pid).memory_info().rss > 150 * 2**20:
                return pid
        await asyncio.sleep(0.02)
    raise AssertionError("no worker started decoding")


async def test_a_timeout_kills_only_the_stuck_worker(tmp_path: Path) -> None:
    slow = tmp_path / "slow.png"
    slow.write_bytes(images.twelve_megapixel("PNG"))
    pool = DecodePool(workers=2, timeout_seconds=0.3, max_pending=4)
    others = worker_pids()
    await pool.start()
    try:
        before = worker_pids(others)
        assert len(before) == 2
        with pytest.raises(DecodeTimeout):
            await pool.process(slow, tmp_path / "o1", LIMITS)
        after = worker_pids(others)
        deadline = time.monotonic() + 10
        while len(after) < 2 and time.monotonic() < deadline:  # pebble spawns the replacement next
            await asyncio.sleep(0.05)
            after = worker_pids(others)
        assert len(before & after) == 1, f"exactly one original worker was replaced: {before} -> {after}"
        assert len(after) == 2, "the pool is back to full strength"
        assert not (tmp_path / "o1").exists()
    finally:
        await pool.close()


async def test_a_worker_killed_mid_decode_is_retried_once_on_a_fresh_worker(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.webp"
    bomb.write_bytes(images.webp_bomb(8000, 5000))
    pool = DecodePool(workers=2, timeout_seconds=60, max_pending=4)
    others = worker_pids()
    await pool.start()
    try:
        task = asyncio.create_task(pool.process(bomb, tmp_path / "out", LIMITS))
        victim = await busy_worker(worker_pids(others))
        os.kill(victim, signal.SIGKILL)
        result = await task
        assert (result.width, result.height) == (8000, 5000)
        assert victim not in worker_pids()
        assert (tmp_path / "out").stat().st_size == result.size_bytes
    finally:
        await pool.close()


async def test_shared_workers_outlive_the_pools_that_use_them(tmp_path: Path) -> None:
    """The tests' shared decode workers (tests/conftest.py decode_processes): each app's pool admits
    and decodes on them, and closing it leaves them running for the next."""
    source = tmp_path / "in.png"
    source.write_bytes(images.solid("PNG"))
    others = worker_pids()
    processes = worker_processes(1)
    try:
        seen = []
        for attempt in range(2):
            pool = DecodePool(workers=1, timeout_seconds=10, max_pending=2, processes=processes)
            await pool.start()
            result = await pool.process(source, tmp_path / f"out{attempt}", LIMITS)
            assert (tmp_path / f"out{attempt}").stat().st_size == result.size_bytes
            await pool.close()
            seen.append(worker_pids(others))
        assert len(seen[0]) == 1
        assert seen[0] == seen[1], "the second pool used the same worker"
    finally:
        processes.stop()
        processes.join(10)
