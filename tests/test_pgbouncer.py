"""Both services behind a real PgBouncer in pool_mode=transaction (tests/pgbouncer.py).

The first test proves the fixture reproduces what an operator saw: with asyncpg's default
statement cache, readiness through the pooler fails on prepared statements. The services' own
runs behind it are in tests/vision_gateway/test_pgbouncer_stack.py; the cross-replica cases
elsewhere in the suite are marked `pgbouncer` and run through it too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import asyncpg
import psycopg
import pytest

from common.settings import SettingsError, load_database_settings
from services.image_store.settings import load_image_store_settings
from services.vision_gateway.settings import load_gateway_settings
from tests.conftest import ROOT
from tests.pgbouncer import PgBouncer
from tests.ports import free_port

pytestmark = pytest.mark.postgres_paths


async def test_the_pooler_really_is_in_transaction_mode(pgbouncer: PgBouncer, database_url: str) -> None:
    """Without DATABASE_POOLER=transaction (asyncpg's named prepared statements) the pooler breaks
    queries as soon as two client connections share server connections: the failure of issue 24."""
    pool = await asyncpg.create_pool(pgbouncer.pooled(database_url), min_size=4, max_size=4)
    try:

        async def query(n: int) -> Any:
            async with pool.acquire() as conn:
                return await conn.fetchval("SELECT $1::int + 0 FROM pg_sleep(0.01)", n)

        async def many() -> None:
            for _ in range(20):
                await asyncio.gather(*(query(n) for n in range(8)))

        with pytest.raises(asyncpg.PostgresError, match="prepared statement"):
            await many()
    finally:
        pool.terminate()


async def test_settings_require_the_direct_url_with_a_transaction_pooler(service_env: dict[str, str]) -> None:
    env = {**service_env, "DATABASE_POOLER": "transaction"}
    env.pop("DATABASE_DIRECT_URL", None)
    for load in (load_database_settings, load_image_store_settings, load_gateway_settings):
        with pytest.raises(SettingsError) as failure:
            load(env)
        required = "DATABASE_DIRECT_URL is required when DATABASE_POOLER=transaction"
        assert any(problem.startswith(required) for problem in failure.value.problems), failure.value.problems
    wrong = {**env, "DATABASE_POOLER": "session"}
    with pytest.raises(SettingsError) as failure:
        load_database_settings(wrong)
    assert "DATABASE_POOLER must be one of none, transaction, got 'session'" in failure.value.problems
    assert load_database_settings(service_env).direct_url == service_env["DATABASE_URL"]


def test_migrate_uses_the_direct_url(empty_database_url: str) -> None:
    """DATABASE_URL names a pooler that is not even there: `retina migrate` never touches it."""
    closed = f"postgresql://retina@127.0.0.1:{free_port()}/retina"
    env = {
        **os.environ,
        "DATABASE_URL": closed,
        "DATABASE_POOLER": "transaction",
        "DATABASE_DIRECT_URL": empty_database_url,
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("applied: 0001"), result.stdout
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT to_regclass('messages') IS NOT NULL").fetchone() == (True,)
