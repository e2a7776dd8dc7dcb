"""Issue 8 item 7: after `kill -9` of the image-store its decode workers kept running (one went on
decoding a bomb for minutes and wrote a temp file after the restart). Against the real process:
the workers die with their parent, nothing is written afterwards, and a restart removes the
stale temp files the crash left."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from services.image_store.storage.filesystem import TEMP_DIR
from tests.conftest import SERVICE_TOKEN, base_env
from tests.image_store import images
from tests.image_store.store_process import process_tree, store_process

HOUR = 3600


def post_in_background(url: str, data: bytes) -> threading.Thread:
    """A multipart upload that nobody waits for (the server is killed under it)."""
    boundary = "retina-orphan-test"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bomb.webp"\r\n'
            f"Content-Type: image/webp\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(  # noqa: S310 - loopback test URL
        f"{url}/api/images",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {SERVICE_TOKEN}",
            "X-User-Id": "alice",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )

    def send() -> None:
        with contextlib.suppress(OSError):  # the connection dies with the server: expected
            urllib.request.urlopen(request, timeout=60).read()  # noqa: S310

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def wait_for_busy_worker(workers: list[psutil.Process], timeout: float = 20) -> psutil.Process:
    """The worker that has started decoding (its resident memory jumps past the idle ~50 MiB)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.memory_info().rss > 150 * 2**20:
                return worker
        time.sleep(0.02)
    raise AssertionError("no worker started decoding")


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_workers_die_with_a_killed_server_and_a_restart_removes_stale_temp_files(
    database_url: str, tmp_path: Path
) -> None:
    storage = tmp_path / "images"
    env = {
        **base_env(database_url, storage),
        "IMAGE_UPLOAD_RATE_PER_MINUTE": "0",
        # Long enough that only the parent's death can stop the decode under way.
        "IMAGE_DECODE_TIMEOUT_SECONDS": "120",
    }
    temp = storage / TEMP_DIR
    with store_process(env, tmp_path / "first.log") as (server, url):
        children = process_tree(server.pid)[1:]
        workers = [p for p in children if "--multiprocessing-fork" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in children]
        post_in_background(url, images.webp_bomb(8000, 5000))
        busy = wait_for_busy_worker(workers)
        os.kill(server.pid, signal.SIGKILL)
        killed_at = time.time()
        server.wait(10)
        deadline = time.monotonic() + 5
        while alive(children) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = alive(children)
        print(f"\nworkers gone {time.time() - killed_at:.2f} s after kill -9 (busy worker pid {busy.pid})")
        assert not survivors, f"still running after the server was killed: {[p.cmdline() for p in survivors]}"

    time.sleep(1)
    left = sorted(temp.iterdir())
    assert all(path.stat().st_mtime <= killed_at for path in left), "a temp file was written after the kill"
    assert any(path.name.startswith("upload-") for path in left), f"the crash left its upload behind: {left}"
    # Crash leftovers, aged past what a live upload can leave untouched (212 s at the defaults);
    # plus one fresh file, as another replica sharing the volume could have mid-upload.
    for path in left:
        os.utime(path, (time.time() - HOUR, time.time() - HOUR))
    fresh = temp / "upload-another-replica"
    fresh.write_bytes(b"in progress")

    with store_process(env, tmp_path / "second.log"):
        remaining = sorted(temp.iterdir())
    assert remaining == [fresh], f"stale temp files survived the restart: {remaining}"
    assert "stale_temp_files_removed" in (tmp_path / "second.log").read_text()
