"""Two image-store processes sharing one bucket and one database (the s3 backend's scale-out).

Real processes (`python -m cli.main image-store`), each with its own connection pool, S3
client and decode workers; only PostgreSQL's advisory locks and the bucket's conditional
writes coordinate them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import ROOT, auth_headers
from tests.image_store.conftest import form, png, row_counts
from tests.image_store.s3_support import BlobView, key_of
from tests.ports import free_port

pytestmark = pytest.mark.parametrize("storage_backend", ["s3"], indirect=True)


def start_replica(env: dict[str, str], scratch: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    scratch.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "image-store", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, **env, "IMAGE_STORAGE_PATH": str(scratch), "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}"


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def wait_ready(session: aiohttp.ClientSession, base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"replica exited: {tail(log)}")
        try:
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"replica not ready in 60 s: {tail(log)}")


@pytest.fixture
def replica_processes(store_env: dict[str, str], tmp_path: Path) -> Iterator[list[tuple[Any, str, Path]]]:
    # Each replica has its own scratch space: nothing on disk is shared, as with separate pods.
    started = [start_replica(store_env, tmp_path / f"scratch-{n}", tmp_path / f"replica-{n}.log") for n in (1, 2)]
    try:
        yield [(process, base, tmp_path / f"replica-{n}.log") for n, (process, base) in enumerate(started, 1)]
    finally:
        for process, _ in started:
            process.terminate()
        for process, _ in started:
            process.wait(timeout=20)


@pytest.fixture
async def replicas(replica_processes: list[tuple[Any, str, Path]]) -> AsyncIterator[tuple[Any, str, str]]:
    async with aiohttp.ClientSession() as session:
        for process, base, log in replica_processes:
            await wait_ready(session, base, process, log)
        yield session, replica_processes[0][1], replica_processes[1][1]


async def post(session: aiohttp.ClientSession, base: str, data: bytes, user: str) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{base}/api/images", data=form(data), headers=auth_headers(user)) as response:
        return response.status, await response.json()


async def fetch(session: aiohttp.ClientSession, url: str, user: str | None = "alice") -> tuple[int, bytes]:
    async with session.get(url, headers=auth_headers(user) if user else {}) as response:
        return response.status, await response.read()


async def test_identical_uploads_through_both_replicas_keep_one_object(
    replicas: tuple[Any, str, str], db: asyncpg.Connection, blobs: BlobView
) -> None:
    session, first, second = replicas
    for round_number in range(4):
        data = png(60 + round_number, 40, (round_number, 9, 9))
        results = await asyncio.gather(
            *(post(session, base, data, user) for base in (first, second) for user in ("alice", "bob", "carol"))
        )
        assert [status for status, _ in results] == [201] * 6, results
        shas = {record["sha256"] for _, record in results}
        assert len(shas) == 1
        sha = shas.pop()
        assert blobs.exists(key_of(sha))
        for _, record in results:
            for base in (first, second):
                status, body = await fetch(session, f"{base}/api/images/{record['id']}", record["owner_id"])
                assert status == 200
                assert hashlib.sha256(body).hexdigest() == sha
    assert await row_counts(db) == (24, 4)
    assert len(blobs.keys()) == 4, "exactly one object per distinct content"
    assert blobs.pending_multipart_uploads() == []


async def test_a_delete_on_one_replica_is_not_served_by_the_other(
    replicas: tuple[Any, str, str], blobs: BlobView
) -> None:
    session, first, second = replicas
    status, record = await post(session, first, png(70, 70), "alice")
    assert status == 201
    signed = f"{second}{record['url']}"
    assert (await fetch(session, f"{second}/api/images/{record['id']}"))[0] == 200
    assert (await fetch(session, signed, None))[0] == 200
    async with session.delete(f"{first}/api/images/{record['id']}", headers=auth_headers()) as deleted:
        assert deleted.status == 204
    assert (await fetch(session, f"{second}/api/images/{record['id']}"))[0] == 404
    assert (await fetch(session, signed, None))[0] == 404
    assert blobs.keys() == []


async def test_upload_and_delete_of_the_same_bytes_on_different_replicas(
    replicas: tuple[Any, str, str], db: asyncpg.Connection, blobs: BlobView
) -> None:
    """The last reference deleted on one replica while the same bytes arrive on the other."""
    session, first, second = replicas
    data = png(50, 50, (1, 2, 3))
    for _ in range(6):
        status, mine = await post(session, first, data, "alice")
        assert status == 201

        async def delete(image_id: str) -> int:
            async with session.delete(f"{first}/api/images/{image_id}", headers=auth_headers("alice")) as response:
                return response.status

        deleted, (uploaded, theirs) = await asyncio.gather(delete(mine["id"]), post(session, second, data, "bob"))
        assert (deleted, uploaded) == (204, 201)
        for base in (first, second):
            status, body = await fetch(session, f"{base}/api/images/{theirs['id']}", "bob")
            assert status == 200, "the surviving image's object must exist"
            assert hashlib.sha256(body).hexdigest() == theirs["sha256"]
        async with session.delete(f"{second}/api/images/{theirs['id']}", headers=auth_headers("bob")) as response:
            assert response.status == 204
    assert await row_counts(db) == (0, 0)
    assert blobs.keys() == []
