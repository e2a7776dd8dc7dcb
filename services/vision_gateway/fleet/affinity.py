"""Which backend served each conversation's last turn, so its next turn can go back there.

In memory, per replica, bounded (least recently used forgotten first). Why not a column: the
prompt cache it points at is itself volatile (Ollama drops it on unload or restart), so a lost
entry costs one cold prompt on another backend, never a wrong answer; a replica that never saw a
conversation routes it like a new one. Sticky sessions at the ingress (by conversation) make every
turn of a conversation reach the same replica, if that matters more than even load.
"""

from __future__ import annotations

import uuid

from cachetools import LRUCache

# Conversations remembered at most (an entry is two short strings: a few MB at this size).
AFFINITY_ENTRIES = 50_000


class Affinity:
    def __init__(self, entries: int = AFFINITY_ENTRIES) -> None:
        self._served: LRUCache[uuid.UUID, str] = LRUCache(entries)

    def backend(self, conversation_id: uuid.UUID | None) -> str | None:
        """The backend (label) that served this conversation's last turn here, if known."""
        if conversation_id is None:
            return None
        return self._served.get(conversation_id)

    def remember(self, conversation_id: uuid.UUID, backend: str) -> None:
        self._served[conversation_id] = backend
