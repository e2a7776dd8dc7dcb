"""All SQL of the image-store.

Every transaction that creates or removes a blob row, or starts the deletion of a blob's bytes,
takes a transaction-scoped advisory lock on the blob's hash first. It serialises "upload of these
bytes" against "deletion of the last image using these bytes" even when the blob row does not
exist yet. No such transaction waits on the storage backend: bytes are written before and deleted
after it, and `image_blob_deletions` tells an upload whether a deletion may still remove bytes it
wrote (uploads.py, deletion.py), so a file that a row points to is never removed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg

from common.db import Connection, connection, direct_connection, required_row
from services.image_store.models import BlobInfo, BlobState, ImageRow, StorageStats

_IMAGE_COLUMNS = """
    i.id, i.owner_id, b.sha256, b.mime_type, b.size_bytes, b.width, b.height, b.storage_key,
    i.original_filename, i.message_id, i.created_at, i.expires_at
"""
_LIVE = "(i.expires_at IS NULL OR i.expires_at > now())"


def _row(record: asyncpg.Record) -> ImageRow:
    return ImageRow(**dict(record))


class ImageRepository:
    """`direct_url` (DATABASE_DIRECT_URL) is where session advisory locks are taken when it is set:
    behind a transaction pooler a pooled connection has no session of its own to hold one."""

    def __init__(self, pool: asyncpg.Pool, *, direct_url: str | None = None) -> None:
        self._pool = pool
        self._direct_url = direct_url

    @asynccontextmanager
    async def blob_transaction(self, sha256: str) -> AsyncIterator[Connection]:
        """A transaction holding the blob's advisory lock until commit or rollback."""
        async with connection(self._pool) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", sha256)
            yield conn

    @staticmethod
    async def upsert_blob(conn: Connection, blob: BlobInfo) -> bool:
        """Record the blob; True when its bytes were already stored (a dedup hit)."""
        inserted = await conn.fetchval(
            """
            INSERT INTO image_blobs (sha256, size_bytes, mime_type, width, height, storage_key)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (sha256) DO NOTHING
            RETURNING true
            """,
            blob.sha256,
            blob.size_bytes,
            blob.mime_type,
            blob.width,
            blob.height,
            blob.storage_key,
        )
        return inserted is None

    @staticmethod
    async def insert_image(
        conn: Connection,
        *,
        owner_id: str,
        sha256: str,
        original_filename: str | None,
        message_id: uuid.UUID | None,
        expires_at: datetime | None,
    ) -> ImageRow:
        image_id = await conn.fetchval(
            """
            INSERT INTO images (owner_id, blob_sha256, message_id, original_filename, expires_at)
            VALUES ($1, $2, $3, $4, $5)
            RETURNING id
            """,
            owner_id,
            sha256,
            message_id,
            original_filename,
            expires_at,
        )
        record = await conn.fetchrow(
            f"SELECT {_IMAGE_COLUMNS} FROM images i JOIN image_blobs b ON b.sha256 = i.blob_sha256 WHERE i.id = $1",
            image_id,
        )
        return _row(required_row(record))

    async def message_owned_by(self, message_id: uuid.UUID, owner_id: str) -> bool:
        async with connection(self._pool) as conn:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM messages m JOIN conversations c ON c.id = m.conversation_id"
                    " WHERE m.id = $1 AND c.owner_id = $2)",
                    message_id,
                    owner_id,
                )
            )

    # ---- deletions of blobs' bytes (the order is explained in uploads.py and deletion.py) -------

    async def blob_state(self, sha256: str) -> BlobState:
        """The blob as an upload sees it before writing its bytes (no lock, no transaction)."""
        async with connection(self._pool) as conn:
            return await self.blob_state_locked(conn, sha256)

    @staticmethod
    async def blob_state_locked(conn: Connection, sha256: str) -> BlobState:
        """The same, read in the caller's transaction (which holds the blob's lock)."""
        record = required_row(
            await conn.fetchrow(
                """
                SELECT EXISTS (SELECT 1 FROM image_blobs WHERE sha256 = $1) AS recorded,
                       d.deletion_id,
                       coalesce(d.in_flight_until > clock_timestamp(), false) AS deleting
                  FROM (VALUES (1)) AS one (x)
                  LEFT JOIN image_blob_deletions d ON d.sha256 = $1
                """,
                sha256,
            )
        )
        return BlobState(record["recorded"], record["deletion_id"], record["deleting"])

    @staticmethod
    async def start_deletion(conn: Connection, sha256: str, settle_seconds: float) -> int:
        """Record that the blob's bytes are about to be deleted; they may be until `settle_seconds`
        from now unless `finish_deletion` says sooner. Returns this deletion's ID (new every time)."""
        deletion_id: int = await conn.fetchval(
            """
            INSERT INTO image_blob_deletions AS d (sha256, deletion_id, started_at, in_flight_until)
            VALUES ($1, nextval('image_blob_deletion_ids'), clock_timestamp(),
                    clock_timestamp() + make_interval(secs => $2))
            ON CONFLICT (sha256) DO UPDATE
               SET deletion_id = excluded.deletion_id,
                   started_at = excluded.started_at,
                   in_flight_until = excluded.in_flight_until
            RETURNING deletion_id
            """,
            sha256,
            settle_seconds,
        )
        return deletion_id

    async def finish_deletion(self, sha256: str, deletion_id: int) -> None:
        """The DELETE answered: uploads of these bytes need not wait for it any longer."""
        async with connection(self._pool) as conn:
            await conn.execute(
                "UPDATE image_blob_deletions SET in_flight_until = NULL WHERE sha256 = $1 AND deletion_id = $2",
                sha256,
                deletion_id,
            )

    @staticmethod
    async def forget_deletions(conn: Connection, sha256: str) -> None:
        """The blob is recorded again (its bytes written after any deletion settled)."""
        await conn.execute("DELETE FROM image_blob_deletions WHERE sha256 = $1", sha256)

    @staticmethod
    async def prune_deletions(conn: Connection, older_than_seconds: float, limit: int) -> None:
        """Drop settled deletion records older than any upload can have been looking at them."""
        await conn.execute(
            """
            DELETE FROM image_blob_deletions WHERE sha256 IN (
                SELECT sha256 FROM image_blob_deletions
                 WHERE started_at < clock_timestamp() - make_interval(secs => $1)
                   AND (in_flight_until IS NULL OR in_flight_until < clock_timestamp())
                 ORDER BY started_at LIMIT $2
                   FOR UPDATE SKIP LOCKED)
            """,
            older_than_seconds,
            limit,
        )

    async def blob_exists(self, conn: Connection, sha256: str) -> bool:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM image_blobs WHERE sha256 = $1)", sha256))

    async def get_image(self, image_id: uuid.UUID, owner_id: str | None) -> ImageRow | None:
        """A live image; `owner_id=None` only for callers holding a signed URL for this ID (or
        the serving path, which checks the owner itself)."""
        async with connection(self._pool, stateless=True) as conn:
            record = await conn.fetchrow(
                f"SELECT {_IMAGE_COLUMNS} FROM images i JOIN image_blobs b ON b.sha256 = i.blob_sha256"
                f" WHERE i.id = $1 AND ($2::text IS NULL OR i.owner_id = $2) AND {_LIVE}",
                image_id,
                owner_id,
            )
        return _row(record) if record else None

    async def list_images(
        self,
        owner_id: str,
        *,
        message_id: uuid.UUID | None,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> list[ImageRow]:
        """Newest first; keyset pagination on (created_at, id) so pages never skip or repeat."""
        async with connection(self._pool) as conn:
            records = await conn.fetch(
                f"""
                SELECT {_IMAGE_COLUMNS} FROM images i JOIN image_blobs b ON b.sha256 = i.blob_sha256
                 WHERE i.owner_id = $1 AND {_LIVE}
                   AND ($2::uuid IS NULL OR i.message_id = $2)
                   AND ($3::timestamptz IS NULL OR (i.created_at, i.id) < ($3, $4::uuid))
                 ORDER BY i.created_at DESC, i.id DESC
                 LIMIT $5
                """,
                owner_id,
                message_id,
                after[0] if after else None,
                after[1] if after else None,
                limit,
            )
        return [_row(r) for r in records]

    async def link_message(self, image_id: uuid.UUID, owner_id: str, message_id: uuid.UUID | None) -> bool:
        async with connection(self._pool) as conn, conn.transaction():
            updated = await conn.fetchval(
                f"UPDATE images i SET message_id = $3 WHERE i.id = $1 AND i.owner_id = $2 AND {_LIVE} RETURNING true",
                image_id,
                owner_id,
                message_id,
            )
            if updated and message_id is not None:
                await self.mark_has_images(conn, message_id)
        return bool(updated)

    @staticmethod
    async def mark_has_images(conn: Connection, message_id: uuid.UUID) -> None:
        """messages.has_images: set in the transaction that links an image to the message."""
        await conn.execute("UPDATE messages SET has_images = true WHERE id = $1", message_id)

    @staticmethod
    async def delete_image_row(conn: Connection, image_id: uuid.UUID, owner_id: str | None) -> str | None:
        """Delete one image row; returns its blob hash (None if no such image)."""
        sha256: str | None = await conn.fetchval(
            "DELETE FROM images WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) RETURNING blob_sha256",
            image_id,
            owner_id,
        )
        return sha256

    async def blob_of(self, image_id: uuid.UUID, owner_id: str) -> str | None:
        async with connection(self._pool) as conn:
            sha256: str | None = await conn.fetchval(
                f"SELECT blob_sha256 FROM images i WHERE i.id = $1 AND i.owner_id = $2 AND {_LIVE}",
                image_id,
                owner_id,
            )
        return sha256

    @staticmethod
    async def delete_blob_if_unused(conn: Connection, sha256: str) -> str | None:
        """Remove the blob row when no image uses it; returns its storage key if removed."""
        storage_key: str | None = await conn.fetchval(
            """
            DELETE FROM image_blobs b WHERE b.sha256 = $1
               AND NOT EXISTS (SELECT 1 FROM images i WHERE i.blob_sha256 = b.sha256)
            RETURNING storage_key
            """,
            sha256,
        )
        return storage_key

    async def stats(self) -> StorageStats:
        async with connection(self._pool) as conn:
            record = await conn.fetchrow(
                """
                SELECT (SELECT count(*) FROM images) AS images,
                       (SELECT count(*) FROM image_blobs) AS blobs,
                       (SELECT coalesce(sum(size_bytes), 0) FROM image_blobs) AS bytes,
                       (SELECT min(created_at) FROM images) AS oldest,
                       (SELECT count(*) FROM images WHERE expires_at <= now()) AS expired
                """
            )
            by_type = await conn.fetch(
                "SELECT mime_type, count(*) AS blobs, sum(size_bytes) AS bytes FROM image_blobs GROUP BY 1"
            )
        totals = required_row(record)  # a SELECT of scalar subqueries: always one row
        return StorageStats(
            images=totals["images"],
            blobs=totals["blobs"],
            bytes=int(totals["bytes"]),
            by_mime_type={r["mime_type"]: {"blobs": r["blobs"], "bytes": int(r["bytes"])} for r in by_type},
            oldest_created_at=totals["oldest"],
            expired_pending=totals["expired"],
        )

    # ---- maintenance --------------------------------------------------------------------

    async def delete_expired_images(self, batch: int) -> list[str]:
        """Delete up to `batch` expired image rows; returns the blob hashes they used."""
        async with connection(self._pool) as conn:
            records = await conn.fetch(
                """
                DELETE FROM images WHERE id IN (
                    SELECT id FROM images WHERE expires_at <= now() ORDER BY expires_at LIMIT $1
                    FOR UPDATE SKIP LOCKED)
                RETURNING blob_sha256
                """,
                batch,
            )
        return [r["blob_sha256"] for r in records]

    async def unreferenced_blobs(self, limit: int) -> list[str]:
        async with connection(self._pool) as conn:
            records = await conn.fetch(
                """
                SELECT b.sha256 FROM image_blobs b
                 WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.blob_sha256 = b.sha256)
                 LIMIT $1
                """,
                limit,
            )
        return [r["sha256"] for r in records]

    async def blobs_after(self, sha256: str, limit: int) -> list[tuple[str, str]]:
        """One keyset page of (sha256, storage_key) in hash order (the primary key's index)."""
        async with connection(self._pool) as conn:
            records = await conn.fetch(
                "SELECT sha256, storage_key FROM image_blobs WHERE sha256 > $1 ORDER BY sha256 LIMIT $2",
                sha256,
                limit,
            )
        return [(r["sha256"], r["storage_key"]) for r in records]

    async def blob_recorded(self, sha256: str) -> bool:
        async with connection(self._pool) as conn:
            return await self.blob_exists(conn, sha256)

    @staticmethod
    async def delete_blob_and_images(conn: Connection, sha256: str) -> int:
        """Integrity repair: a blob whose file is gone or wrong takes its images with it."""
        deleted = await conn.fetchval(
            "WITH gone AS (DELETE FROM images WHERE blob_sha256 = $1 RETURNING 1) SELECT count(*) FROM gone",
            sha256,
        )
        await conn.execute("DELETE FROM image_blobs WHERE sha256 = $1", sha256)
        return int(deleted)

    @asynccontextmanager
    async def try_maintenance_lock(self, lock_id: int) -> AsyncIterator[bool]:
        """Session advisory lock so one replica at a time runs maintenance.

        On a connection of its own to DATABASE_DIRECT_URL when that is set (opened for the round,
        closed after it: the lock goes with it), otherwise on a pooled connection.
        """
        session = direct_connection(self._direct_url) if self._direct_url else connection(self._pool)
        async with session as conn:
            locked = await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id)
            try:
                yield bool(locked)
            finally:
                if locked:
                    await conn.execute("SELECT pg_advisory_unlock($1)", lock_id)
