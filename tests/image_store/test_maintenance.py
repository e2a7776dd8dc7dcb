"""Retention clean-up, integrity checks and repair, one-replica election, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.image_store.app import MAINTENANCE_KEY
from tests.conftest import ROOT, auth_headers
from tests.image_store.conftest import BACKENDS, png, row_counts, upload
from tests.image_store.s3_support import BlobView, key_of

STORAGE_BACKENDS = BACKENDS  # every test here that reaches storage runs on both (conftest)


async def test_cleanup_expires_images_and_keeps_shared_blobs(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView
) -> None:
    shared = png(30, 30)
    alice = await (await upload(store_client, shared, user="alice")).json()
    bob = await (await upload(store_client, shared, user="bob")).json()
    lonely = await (await upload(store_client, png(31, 31), user="alice")).json()
    await db.execute(
        "UPDATE images SET expires_at = now() - interval '1 minute' WHERE id = ANY($1::uuid[])",
        [alice["id"], lonely["id"]],
    )
    maintenance = store_client.app[MAINTENANCE_KEY]
    report = await maintenance.cleanup()
    assert (report.expired_images, report.blobs_deleted, report.files_deleted) == (2, 1, 1)
    assert await row_counts(db) == (1, 1)
    assert blobs.keys() == [key_of(bob["sha256"])]
    served = await store_client.get(f"/api/images/{bob['id']}", headers=auth_headers("bob"))
    assert served.status == 200
    metrics = await (await store_client.get("/metrics")).text()
    assert 'image_store_cleanup_deleted_total{kind="image"} 2.0' in metrics
    assert 'image_store_maintenance_last_success_timestamp_seconds{task="cleanup"}' in metrics


async def make_integrity_problems(client: TestClient, blobs: BlobView) -> dict[str, Any]:
    missing = await (await upload(client, png(41, 41))).json()
    corrupt = await (await upload(client, png(42, 42))).json()
    healthy = await (await upload(client, png(43, 43))).json()
    blobs.remove(key_of(missing["sha256"]))
    blobs.write(key_of(corrupt["sha256"]), b"bit rot")
    orphan = key_of("eeff" + "0" * 60)
    blobs.write(orphan, b"left behind")
    if blobs.backend == "filesystem":
        old = time.time() - 7200
        os.utime(blobs.root / orphan, (old, old))
    else:
        # An object's LastModified cannot be set: wait past the s3 tests' 6 s grace period instead.
        await asyncio.sleep(7)
    fresh_orphan = key_of("eeff" + "1" * 60)
    blobs.write(fresh_orphan, b"upload in progress elsewhere")
    return {
        "missing": missing,
        "corrupt": corrupt,
        "healthy": healthy,
        "orphan": orphan,
        "fresh": fresh_orphan,
    }


async def test_integrity_finds_and_repairs(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    problems = await make_integrity_problems(store_client, blobs)
    maintenance = store_client.app[MAINTENANCE_KEY]
    report = await maintenance.integrity(repair=False)
    assert report.missing_files == [key_of(problems["missing"]["sha256"])]
    assert report.checksum_mismatches == [key_of(problems["corrupt"]["sha256"])]
    assert report.orphan_files == [problems["orphan"]], "fresh files are within the grace period"
    assert (report.blobs_checked, report.files_checked) == (3, 4)
    assert await row_counts(db) == (3, 3), "a check without --repair changes nothing"

    refused = await maintenance.integrity(repair=True)
    assert refused.repair_refused, "1 of 3 blobs missing is more than the default 10 %"
    assert await row_counts(db) == (3, 3)
    repaired = await maintenance.integrity(repair=True, max_missing_percent=50)
    assert repaired.repaired
    assert not repaired.repair_refused
    assert repaired.images_removed == 2
    assert await row_counts(db) == (1, 1)
    assert blobs.keys() == sorted([key_of(problems["healthy"]["sha256"]), problems["fresh"]])
    assert (await maintenance.integrity()).problems == 0


@pytest.mark.pgbouncer
async def test_only_one_replica_runs_maintenance_at_a_time(store_client: TestClient) -> None:
    maintenance = store_client.app[MAINTENANCE_KEY]
    results = await asyncio.gather(*(maintenance.run_once() for _ in range(4)))
    assert results.count(True) >= 1
    repository = maintenance._repo
    async with repository.try_maintenance_lock(0x7265_7469_6E61) as held:
        assert held
        assert await maintenance.run_once() is False, "another holder of the lock blocks this round"


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "maintenance", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.pgbouncer
async def test_cli_integrity_and_cleanup(store_client: TestClient, blobs: BlobView, store_env: dict[str, str]) -> None:
    await make_integrity_problems(store_client, blobs)
    check = await asyncio.to_thread(run_cli, store_env, "integrity")
    assert check.returncode == 1, check.stderr
    report = json.loads(check.stdout)
    assert report["task"] == "integrity"
    assert report["problems"] == 3
    assert report["repaired"] is False
    repair = await asyncio.to_thread(run_cli, store_env, "integrity", "--repair", "--max-missing-percent", "50")
    assert repair.returncode == 0, repair.stderr
    assert json.loads(repair.stdout)["images_removed"] == 2
    cleanup = await asyncio.to_thread(run_cli, store_env, "cleanup")
    assert cleanup.returncode == 0, cleanup.stderr
    assert json.loads(cleanup.stdout)["task"] == "cleanup"
