"""StopCatchUp on its own: which live streams a catch-up stops, and that it reports each stop once.

The database's answer (which rows no longer say `streaming`) is a set the test fills; the query
itself runs through PgBouncer in test_pgbouncer_stack.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from services.vision_gateway.stop_catchup import StopCatchUp
from services.vision_gateway.streams import StreamRegistry


async def test_a_stream_already_stopping_is_not_stopped_again() -> None:
    """The recheck a few seconds after a reconnect finds the rows it stopped the first time still
    closed (their streams are writing their final answers): only streams not yet stopping count."""
    registry = StreamRegistry()
    closed_elsewhere: set[uuid.UUID] = set()

    async def ended_streams(stream_ids: Collection[uuid.UUID]) -> list[uuid.UUID]:
        return [stream_id for stream_id in stream_ids if stream_id in closed_elsewhere]

    catch_up = StopCatchUp(registry, ended_streams)
    first, second, by_user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with (
        registry.register(first, "alice", uuid.uuid4()) as first_live,
        registry.register(second, "alice", uuid.uuid4()) as second_live,
        registry.register(by_user, "alice", uuid.uuid4()),
    ):
        closed_elsewhere.add(first)
        assert await catch_up.catch_up() == 1
        assert (first_live.stop_reason, second_live.stop_reason) == ("stopped", None)

        closed_elsewhere.add(second)
        assert registry.stop_local(by_user)  # its owner stopped it here; its row is closed too
        closed_elsewhere.add(by_user)
        assert await catch_up.catch_up() == 1, "only the second stream is a stop caught up"
        assert second_live.stop_reason == "stopped"
        assert await catch_up.catch_up() == 0
