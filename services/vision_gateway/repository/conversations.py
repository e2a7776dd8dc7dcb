"""A user's conversations as a whole: their messages, the list, deletion."""

from __future__ import annotations

import uuid
from datetime import datetime

from common.db import connection, required_row
from services.vision_gateway.repository.records import (
    MESSAGE_COLUMNS,
    TITLE_SOURCE_CHARS,
    ConversationSummary,
    DeletedConversation,
    PoolQueries,
    StoredMessage,
)


class ConversationQueries(PoolQueries):
    async def messages(self, conversation_id: uuid.UUID, owner_id: str) -> list[StoredMessage] | None:
        async with connection(self._pool) as conn:
            owned = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND owner_id = $2)",
                conversation_id,
                owner_id,
            )
            if not owned:
                return None
            records = await conn.fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY created_at, id",
                conversation_id,
            )
        return [StoredMessage(**dict(r)) for r in records]

    # ---- conversation list and deletion (GET /api/conversations, DELETE /api/conversations/{id}) ----

    async def list_conversations(
        self, owner_id: str, *, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> list[ConversationSummary]:
        """The owner's conversations, most recent activity first; `after` is the last row of the previous page.

        Last activity is the newest of the conversation's own update time and its messages' creation
        and completion times, so a conversation moves up when an answer finishes, not only when asked.
        """
        after_at, after_id = after if after is not None else (None, None)
        async with connection(self._pool) as conn:
            records = await conn.fetch(
                f"""
                WITH summary AS (
                    SELECT c.id, c.created_at,
                           greatest(c.updated_at, max(coalesce(m.completed_at, m.created_at))) AS last_activity_at,
                           count(m.id) AS message_count,
                           coalesce(bool_or(m.has_images), false) AS has_images
                      FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
                     WHERE c.owner_id = $1
                     GROUP BY c.id
                )
                SELECT s.*, first_message.content AS first_content
                  FROM summary s
                  LEFT JOIN LATERAL (
                      SELECT left(content, {TITLE_SOURCE_CHARS}) AS content FROM messages
                       WHERE conversation_id = s.id ORDER BY created_at, id LIMIT 1
                  ) first_message ON true
                 WHERE $2::timestamptz IS NULL OR (s.last_activity_at, s.id) < ($2::timestamptz, $3::uuid)
                 ORDER BY s.last_activity_at DESC, s.id DESC
                 LIMIT $4
                """,
                owner_id,
                after_at,
                after_id,
                limit,
            )
        return [ConversationSummary(**dict(r)) for r in records]

    async def delete_conversation(self, conversation_id: uuid.UUID, owner_id: str) -> DeletedConversation | None:
        """Delete a conversation and (ON DELETE CASCADE) its messages; None if it is not the owner's.

        Images in the image-store keep existing: their `message_id` is set to NULL by the foreign key.
        Returned: the image IDs its messages named and the streams still running, read in the same
        statement (one snapshot) as the delete.
        """
        async with connection(self._pool) as conn:
            record = await conn.fetchrow(
                """
                WITH doomed AS (
                    SELECT id FROM conversations WHERE id = $1 AND owner_id = $2 FOR UPDATE
                ), facts AS (
                    SELECT coalesce(array_agg(DISTINCT image_id) FILTER (WHERE image_id IS NOT NULL), '{}')
                               AS image_ids,
                           coalesce(array_agg(DISTINCT m.stream_id)
                                    FILTER (WHERE m.status = 'streaming' AND m.stream_id IS NOT NULL), '{}')
                               AS live_stream_ids
                      FROM messages m LEFT JOIN LATERAL unnest(m.image_ids) AS image_id ON true
                     WHERE m.conversation_id IN (SELECT id FROM doomed)
                ), gone AS (
                    DELETE FROM conversations WHERE id IN (SELECT id FROM doomed) RETURNING id
                )
                SELECT (SELECT count(*) FROM gone) AS deleted, facts.image_ids, facts.live_stream_ids FROM facts
                """,
                conversation_id,
                owner_id,
            )
        facts = required_row(record)  # selected from an ungrouped aggregate: always one row
        if not facts["deleted"]:
            return None
        return DeletedConversation(list(facts["image_ids"]), list(facts["live_stream_ids"]))
