"""A coroutine that runs in the background for the lifetime of a block (a cleanup_ctx building block).

Every long-lived loop of the services (periodic jobs, the LISTEN connection, stream liveness, the
queue of unsaved answers) is started and stopped the same way: a named task created on entry,
cancelled and awaited on exit, so no loop outlives the app and none is left unawaited.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def in_background(work: Coroutine[Any, Any, object], *, name: str) -> AsyncIterator[asyncio.Task[object]]:
    """Run `work` as a task named `name` until the block exits; then cancel it and wait for it to end."""
    task: asyncio.Task[object] = asyncio.create_task(work, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
