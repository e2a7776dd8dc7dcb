"""Read-only borrows go back to the pool without asyncpg's reset round trip; others keep it."""

from __future__ import annotations

from uuid import uuid4

import asyncpg
import pytest

from common.db import connection, open_pool

pytestmark = pytest.mark.postgres_paths  # .ci/run runs these on both kinds of test server


async def last_query(admin: asyncpg.Connection, pid: int) -> str:
    return await admin.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)


async def test_stateless_borrow_skips_the_reset_query(database_url: str) -> None:
    admin = await asyncpg.connect(database_url)
    try:
        async with open_pool(database_url, min_size=1, max_size=1) as pool:
            async with connection(pool, stateless=True) as conn:
                pid = await conn.fetchval("SELECT pg_backend_pid() /* read */")
            assert await last_query(admin, pid) == "SELECT pg_backend_pid() /* read */"

            async with connection(pool) as conn:
                assert await conn.fetchval("SELECT pg_backend_pid() /* write */") == pid
                await conn.execute("SET application_name = 'changed'")
            reset = await last_query(admin, pid)
            assert "RESET ALL" in reset

            async with connection(pool, stateless=True) as conn:
                # The previous borrow's session state was reset; the mark does not leak into the next.
                assert await conn.fetchval("SHOW application_name") != "changed"
            async with connection(pool) as conn:
                await conn.fetchval("SELECT 1")
            assert "RESET ALL" in await last_query(admin, pid)
    finally:
        await admin.close()


async def test_stateless_borrow_with_an_open_transaction_is_still_rolled_back(database_url: str) -> None:
    async with open_pool(database_url, min_size=1, max_size=1) as pool:
        async with connection(pool, stateless=True) as conn:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
        async with connection(pool, stateless=True) as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None


async def test_a_turns_writes_skip_the_reset_and_only_its_opening_commits_asynchronously(database_url: str) -> None:
    """start_turn commits without waiting for the WAL flush (set_config local to its transaction);
    the final write is a single statement too, so neither pays the reset round trip, and the final
    write is durable again: nothing of the opening leaks into the session. (Progress saves do not
    use the pool: the replica's liveness connection writes them in batches.)"""
    from services.vision_gateway.repository.turns import TurnQueries

    admin = await asyncpg.connect(database_url)
    # The suite's embedded server runs with synchronous_commit off; this database's sessions start with it on.
    await admin.execute(
        f'ALTER DATABASE "{await admin.fetchval("SELECT current_database()")}" SET synchronous_commit = on'
    )
    try:
        async with open_pool(database_url, min_size=1, max_size=1) as pool:
            turns = TurnQueries(pool)
            async with connection(pool, stateless=True) as conn:
                pid = await conn.fetchval("SELECT pg_backend_pid()")
            turn = await turns.start_turn(
                owner_id="alice", conversation_id=None, content="hi", model="llava", image_ids=[], stream_id=uuid4()
            )
            assert "set_config('synchronous_commit', 'off', true)" in await last_query(admin, pid), "no reset after it"
            async with connection(pool, stateless=True) as conn:
                assert await conn.fetchval("SHOW synchronous_commit") == "on", "local to the opening's transaction"
            await turns.finish_turn(turn.assistant_message_id, content="Hello", status="complete", error=None, stats={})
            assert (await last_query(admin, pid)).lstrip().startswith("UPDATE messages SET content")
            row = await admin.fetchrow("SELECT content, status FROM messages WHERE id = $1", turn.assistant_message_id)
            assert (row["content"], row["status"]) == ("Hello", "complete")
    finally:
        await admin.close()
