"""Where a stream stands, across replicas: ownership, liveness, interruption, stop notifications."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence

from common.db import Connection, connection
from services.vision_gateway.repository.records import (
    MARK_INTERRUPTED,
    STOP_CHANNEL,
    SWEEP_LOCK_KEY,
    PoolQueries,
    ProgressRow,
    StreamState,
)


class StreamQueries(PoolQueries):
    async def stream_state(self, stream_id: uuid.UUID) -> StreamState | None:
        """Who owns a stream and where its answer stands (running or ended, on any replica)."""
        async with connection(self._pool) as conn:
            record = await conn.fetchrow(
                """
                SELECT c.owner_id, m.status, m.id AS message_id
                  FROM messages m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.stream_id = $1
                """,
                stream_id,
            )
        return StreamState(**dict(record)) if record else None

    async def interrupt_stream(self, message_id: uuid.UUID) -> str:
        """Close a stream no replica is running; returns the message's status afterwards."""
        async with connection(self._pool) as conn:
            status: str | None = await conn.fetchval(
                f"UPDATE messages SET {MARK_INTERRUPTED} WHERE id = $1 AND status = 'streaming' RETURNING status",
                message_id,
            )
            if status:
                return status
            current: str = await conn.fetchval("SELECT status FROM messages WHERE id = $1", message_id)
            return current

    async def interrupt_stale_streams(self, silent_for_seconds: float) -> int:
        """Sweep: close streams no replica has touched (or saved) for that long; one replica at a time.

        A live replica touches every row it holds every third of that (touch_streams), so only the
        rows of a replica that is gone (or cut off from the database) qualify.
        """
        async with connection(self._pool) as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SWEEP_LOCK_KEY):
                return 0
            records = await conn.fetch(
                f"""
                UPDATE messages SET {MARK_INTERRUPTED}
                 WHERE status = 'streaming'
                   AND coalesce(progress_at, created_at) < now() - make_interval(secs => $1)
                RETURNING id
                """,
                silent_for_seconds,
            )
        return len(records)

    async def ended_streams(self, stream_ids: Collection[uuid.UUID]) -> list[uuid.UUID]:
        """Which of these streams' rows no longer say `streaming` (closed by another replica)."""
        async with connection(self._pool, stateless=True) as conn:
            records = await conn.fetch(
                "SELECT stream_id FROM messages WHERE stream_id = ANY($1::uuid[]) AND status <> 'streaming'",
                list(stream_ids),
            )
        return [record["stream_id"] for record in records]

    async def notify_stop(self, stream_id: uuid.UUID) -> None:
        async with connection(self._pool) as conn:
            await conn.execute("SELECT pg_notify($1, $2)", STOP_CHANNEL, str(stream_id))


async def touch_streams(conn: Connection, message_ids: Collection[uuid.UUID], *, within: float) -> int:
    """Mark every row a replica holds as alive, in one statement; returns how many were touched.

    Called on a connection of the replica's own, not the pool's, between (never during) the
    replica's batched progress saves. Rows locked right now are skipped, not waited for: whoever
    holds the lock (a final write, a stop, a sweep) is writing that row itself.
    """
    if not message_ids:
        await conn.execute("SELECT 1", timeout=within)  # still proves the connection works
        return 0
    touched: int = await conn.fetchval(
        """
        WITH held AS (
            SELECT id FROM messages WHERE id = ANY($1::uuid[]) AND status = 'streaming' FOR UPDATE SKIP LOCKED
        ), touched AS (
            UPDATE messages m SET progress_at = now() FROM held WHERE m.id = held.id RETURNING 1
        )
        SELECT count(*) FROM touched
        """,
        list(message_ids),
        timeout=within,
    )
    return touched


async def save_progress(conn: Connection, rows: Sequence[ProgressRow], *, within: float) -> set[uuid.UUID]:
    """The text so far of all a replica's streams that grew, in one statement; returns the rows written.

    Only rows still `streaming` are written, and rows locked right now are skipped: a final write
    (or a stop, a sweep) that got there first, or is writing now, is never overwritten by the
    text it already superseded. Skipping also means this statement never waits for a lock; a row
    skipped because it was locked only for a moment (an image being linked to its message) is not
    among those returned, so its text is offered again at the next interval.
    """
    written: list[uuid.UUID] | None = await conn.fetchval(
        """
        WITH batch AS (
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS b(id, content, thinking)
        ), held AS (
            SELECT m.id, batch.content, batch.thinking FROM messages m JOIN batch ON batch.id = m.id
             WHERE m.status = 'streaming' FOR UPDATE OF m SKIP LOCKED
        ), written AS (
            UPDATE messages m SET content = held.content, thinking = nullif(held.thinking, ''), progress_at = now()
              FROM held WHERE m.id = held.id RETURNING m.id
        )
        SELECT array_agg(id) FROM written
        """,
        [row.message_id for row in rows],
        [row.content for row in rows],
        [row.thinking for row in rows],
        timeout=within,
    )
    return set(written or ())
