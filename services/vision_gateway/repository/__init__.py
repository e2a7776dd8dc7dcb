"""All SQL of the vision-gateway: conversations, messages, stream ownership.

One repository, in parts by job (turns, streams, whole conversations) so no module grows past
what can be read at once; callers see the single `ConversationRepository` over one pool.
"""

from __future__ import annotations

from services.vision_gateway.repository.conversations import ConversationQueries
from services.vision_gateway.repository.records import (
    STOP_CHANNEL,
    SWEEP_LOCK_KEY,
    ConversationSummary,
    DeletedConversation,
    NewTurn,
    ProgressRow,
    StoredMessage,
    StreamState,
)
from services.vision_gateway.repository.streams import StreamQueries, save_progress, touch_streams
from services.vision_gateway.repository.turns import TurnQueries

__all__ = [
    "STOP_CHANNEL",
    "SWEEP_LOCK_KEY",
    "ConversationRepository",
    "ConversationSummary",
    "DeletedConversation",
    "NewTurn",
    "ProgressRow",
    "StoredMessage",
    "StreamState",
    "save_progress",
    "touch_streams",
]


class ConversationRepository(TurnQueries, StreamQueries, ConversationQueries):
    """The gateway's repository: every query, over the app's one asyncpg pool."""
