"""`retina maintenance integrity --repair` against storage that looks wrong (a mistyped or
unmounted IMAGE_STORAGE_PATH, an empty bucket or prefix, most blobs gone): it refuses, exits 3,
says why and how to override, and changes nothing: no row, no file, no directory. Run as the
operator runs it (`python -m cli.main maintenance ...`, a real PostgreSQL, a real directory
or moto's S3)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from cli.main import main
from services.image_store.app import MAINTENANCE_KEY
from tests.image_store.conftest import BACKENDS, png, row_counts, stored_files, upload
from tests.image_store.s3_support import BlobView, key_of
from tests.image_store.test_maintenance import run_cli

REFUSED = 3


async def upload_images(client: TestClient, count: int) -> list[dict[str, Any]]:
    records = []
    for index in range(count):
        response = await upload(client, png(20 + index, 20))
        assert response.status == 201, await response.text()
        records.append(await response.json())
    return records


async def maintenance(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, env, *args)


def report_of(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(run.stdout)
    assert report["task"] == "integrity"
    return report


def assert_refused(run: subprocess.CompletedProcess[str], *reasons: str) -> dict[str, Any]:
    assert run.returncode == REFUSED, (run.stdout, run.stderr)
    assert "repair refused, nothing was changed" in run.stderr
    assert "--force" in run.stderr
    for reason in reasons:
        assert reason in run.stderr
    report = report_of(run)
    assert report["repair_refused"] is True
    assert report["repaired"] is False
    assert report["images_removed"] == 0
    return report


async def test_repair_refuses_a_storage_path_that_does_not_exist(
    store_client: TestClient, db: asyncpg.Connection, store_env: dict[str, str], storage_root: Path, tmp_path: Path
) -> None:
    await upload_images(store_client, 4)
    files = stored_files(storage_root)
    assert len(files) == 4
    typo = tmp_path / "imgaes"
    env = {**store_env, "IMAGE_STORAGE_PATH": str(typo)}

    check = await maintenance(env, "integrity")
    assert check.returncode == 1, check.stderr
    report = report_of(check)
    assert len(report["missing_files"]) == 4, "the report-only run still reports"
    assert f"the directory {typo} (IMAGE_STORAGE_PATH) does not exist" in report["suspect"]
    assert "warning" in check.stderr
    assert not typo.exists(), "checking creates nothing"

    repair = await maintenance(env, "integrity", "--repair")
    assert_refused(repair, f"{typo} (IMAGE_STORAGE_PATH) does not exist", "not mounted")
    assert await row_counts(db) == (4, 4)
    assert stored_files(storage_root) == files
    assert not typo.exists(), "a refused repair creates no directory"

    cleanup = await maintenance(env, "cleanup")
    assert cleanup.returncode == 0, cleanup.stderr
    assert not typo.exists(), "neither does clean-up"

    forced = await maintenance(env, "integrity", "--repair", "--force")
    assert forced.returncode == 0, forced.stderr
    assert report_of(forced)["images_removed"] == 4
    assert "repaired with --force" in forced.stderr
    assert await row_counts(db) == (0, 0), "--force overrides"
    assert not typo.exists()


@pytest.mark.parametrize("storage_backend", BACKENDS, indirect=True)
async def test_repair_refuses_storage_that_lists_no_blobs(
    store_client: TestClient, db: asyncpg.Connection, store_env: dict[str, str], blobs: BlobView, tmp_path: Path
) -> None:
    """Filesystem: the mount point of a volume that is not mounted (an existing, empty
    directory). S3: a mistyped S3_PREFIX, under which the bucket lists no objects at all."""
    await upload_images(store_client, 3)
    keys = blobs.keys()
    if blobs.backend == "filesystem":
        mount_point = tmp_path / "mnt"
        mount_point.mkdir()
        env = {**store_env, "IMAGE_STORAGE_PATH": str(mount_point)}
        where = f"the directory {mount_point} (IMAGE_STORAGE_PATH)"
    else:
        env = {**store_env, "S3_PREFIX": "retina/imgaes"}
        where = f"s3://{store_env['S3_BUCKET']}/retina/imgaes/ (S3_BUCKET, S3_PREFIX)"

    repair = await maintenance(env, "integrity", "--repair")
    report = assert_refused(repair, f"{where} holds no blobs at all while the database records 3")
    assert (report["blobs_checked"], report["files_checked"], len(report["missing_files"])) == (3, 0, 3)
    assert await row_counts(db) == (3, 3)
    assert blobs.keys() == keys
    if blobs.backend == "filesystem":
        assert list(mount_point.iterdir()) == [], "no temp directory or probe file either"


@pytest.mark.parametrize("storage_backend", BACKENDS, indirect=True)
async def test_repair_refuses_when_half_the_blobs_are_missing(
    store_client: TestClient, db: asyncpg.Connection, store_env: dict[str, str], blobs: BlobView
) -> None:
    records = await upload_images(store_client, 4)
    for record in records[:2]:
        blobs.remove(key_of(record["sha256"]))
    kept = blobs.keys()

    repair = await maintenance(store_env, "integrity", "--repair")
    assert_refused(repair, "2 of the 4 blobs the database records (50.0%) are missing", "--max-missing-percent 10")
    assert await row_counts(db) == (4, 4)
    assert blobs.keys() == kept

    stricter = await maintenance(store_env, "integrity", "--repair", "--max-missing-percent", "49.9")
    assert_refused(stricter, "more than --max-missing-percent 49.9")

    allowed = await maintenance(store_env, "integrity", "--repair", "--max-missing-percent", "50")
    assert allowed.returncode == 0, allowed.stderr
    report = report_of(allowed)
    assert (report["repaired"], report["repair_refused"], report["images_removed"]) == (True, False, 2)
    assert await row_counts(db) == (2, 2)
    assert blobs.keys() == kept


@pytest.mark.parametrize("storage_backend", BACKENDS, indirect=True)
async def test_repair_goes_ahead_when_few_blobs_are_missing(
    store_client: TestClient, db: asyncpg.Connection, store_env: dict[str, str], blobs: BlobView
) -> None:
    records = await upload_images(store_client, 20)
    blobs.remove(key_of(records[0]["sha256"]))  # 1 of 20: 5 %

    repair = await maintenance(store_env, "integrity", "--repair")
    assert repair.returncode == 0, repair.stderr
    assert repair.stderr == ""
    report = report_of(repair)
    assert report["missing_files"] == [key_of(records[0]["sha256"])]
    assert (report["suspect"], report["repaired"], report["images_removed"]) == (None, True, 1)
    assert await row_counts(db) == (19, 19)
    assert blobs.keys() == sorted(key_of(record["sha256"]) for record in records[1:])


async def test_background_maintenance_logs_wrong_storage_and_deletes_nothing(
    store_client: TestClient,
    db: asyncpg.Connection,
    storage_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The volume disappears under a running replica: its elected round removes nothing,
    creates nothing, and logs an error saying why."""
    await upload_images(store_client, 3)
    await asyncio.to_thread(storage_root.rename, tmp_path / "unmounted")
    caplog.set_level(logging.ERROR)

    assert await store_client.app[MAINTENANCE_KEY].run_once() is True

    assert await row_counts(db) == (3, 3)
    assert not await asyncio.to_thread(storage_root.exists), "nothing re-created it"
    formatter = logging.getLogger().handlers[0].formatter
    assert formatter is not None
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.levelno >= logging.ERROR]
    [line] = [line for line in lines if line["event"] == "storage_looks_wrong"]
    assert line["level"] == "error"
    assert f"{storage_root} (IMAGE_STORAGE_PATH) does not exist" in line["reason"]
    assert line["missing_files"] == 3
    assert "nothing repaired" in line["action"]


@pytest.mark.parametrize("value", ["150", "-1", "ten"])
def test_max_missing_percent_must_be_a_percentage(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["maintenance", "integrity", "--repair", "--max-missing-percent", value])
    assert exited.value.code == 2
    assert "is not a percentage from 0 to 100" in capsys.readouterr().err


def test_help_says_when_a_repair_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["maintenance", "integrity", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--force", "--max-missing-percent N", "(default: 10)", "exits with status 3", "does not exist"):
        assert phrase in text
