"""`retina maintenance migrate-storage`: a volume's blobs copied to a bucket, verified, resumable,
and then served by an s3-backed image-store on the same database."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ROOT, auth_headers
from tests.image_store.conftest import photo, png, upload
from tests.image_store.s3_support import CREDENTIALS, REGION, BlobView, MotoServer, key_of


def migrate(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "maintenance", "migrate-storage", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
    return result.returncode, report, result.stdout + result.stderr


async def test_migrate_copies_verifies_resumes_and_the_bucket_serves(
    store_client: TestClient,
    store_env: dict[str, str],
    moto_server: MotoServer,
    client_for: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = [
        await (await upload(store_client, data)).json() for data in (png(20, 20), png(21, 21), photo("coffee.png"))
    ]
    bucket = moto_server.new_bucket()
    s3 = BlobView("s3", ROOT, s3=moto_server.client(), bucket=bucket, prefix="images/")
    env = {
        **store_env,
        **CREDENTIALS,
        "S3_ENDPOINT_URL": moto_server.endpoint,
        "S3_BUCKET": bucket,
        "S3_REGION": REGION,
        "S3_PREFIX": "images",
    }
    # A file on the volume whose bytes do not match its name is reported, not copied.
    rotten = key_of(hashlib.sha256(b"original").hexdigest())
    storage_path = store_env["IMAGE_STORAGE_PATH"]
    rotten_path = os.path.join(storage_path, rotten)
    os.makedirs(os.path.dirname(rotten_path))
    with open(rotten_path, "wb") as out:  # noqa: ASYNC230 - a few bytes of test set-up
        out.write(b"bit rot")

    status, report, output = await asyncio.to_thread(migrate, env)
    assert status == 1, output
    assert (report["copied"], report["verified"], report["skipped_existing"]) == (3, 3, 0), report
    assert report["source_corrupt"] == [rotten]
    assert report["bytes_copied"] == sum(r["size_bytes"] for r in records)
    assert s3.keys() == sorted(key_of(r["sha256"]) for r in records)

    # Interrupted runs resume: what is there is skipped, what is missing is copied again.
    os.remove(rotten_path)
    s3.remove(key_of(records[1]["sha256"]))
    status, report, output = await asyncio.to_thread(migrate, env, "--no-verify")
    assert status == 0, output
    assert (report["copied"], report["skipped_existing"], report["verified"]) == (1, 2, 0), report
    for record in records:
        assert hashlib.sha256(s3.read(key_of(record["sha256"]))).hexdigest() == record["sha256"]

    # The same database with IMAGE_STORAGE_BACKEND=s3 now serves every image from the bucket.
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    switched = await client_for(**{**env, "IMAGE_STORAGE_BACKEND": "s3"})
    for record in records:
        served = await switched.get(f"/api/images/{record['id']}", headers=auth_headers())
        assert served.status == 200
        assert hashlib.sha256(await served.read()).hexdigest() == record["sha256"]


def test_migrate_needs_a_bucket(store_env: dict[str, str]) -> None:
    status, _, output = migrate(store_env)
    assert status != 0
    assert "set S3_BUCKET" in output


async def test_migrate_from_a_path_that_does_not_exist_says_so(
    store_env: dict[str, str], moto_server: MotoServer, tmp_path: Path
) -> None:
    """A mistyped IMAGE_STORAGE_PATH is neither created nor taken for an empty volume."""
    typo = tmp_path / "imgaes"
    env = {
        **store_env,
        **CREDENTIALS,
        "IMAGE_STORAGE_PATH": str(typo),
        "S3_ENDPOINT_URL": moto_server.endpoint,
        "S3_BUCKET": moto_server.new_bucket(),
        "S3_REGION": REGION,
    }
    status, _report, output = await asyncio.to_thread(migrate, env)
    assert status == 1, output
    assert f"the directory {typo} (IMAGE_STORAGE_PATH) does not exist" in output
    assert not typo.exists()
