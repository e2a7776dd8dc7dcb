"""PendingAnswers' bounds and shutdown, against a repository whose database is down until told.

What happens with a real PostgreSQL stopped and started is in test_database_outages.py; these are
the limits that would need hours or gigabytes there: how many answers and bytes are kept, how long,
and what a shutdown does with them.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from common.errors import DatabaseUnavailable
from services.vision_gateway.chat import pending as pending_module
from services.vision_gateway.chat.pending import ENTRY_OVERHEAD_BYTES, PendingAnswers, PendingFinal
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.streams import StreamRegistry


class Database:
    """finish_turn of the repository; raises DatabaseUnavailable while `up` is false."""

    def __init__(self) -> None:
        self.up = False
        self.written: list[tuple[uuid.UUID, str, str]] = []

    async def finish_turn(self, message_id: uuid.UUID, **fields: Any) -> None:
        if not self.up:
            raise DatabaseUnavailable()
        self.written.append((message_id, fields["content"], fields["status"]))


def final(content: str = "the whole answer") -> PendingFinal:
    return PendingFinal(uuid.uuid4(), content, "", "complete", None, {"completion_tokens": 3})


def make(database: Database, **limits: Any) -> tuple[PendingAnswers, StreamRegistry, CollectorRegistry]:
    registry, metrics_registry = StreamRegistry(), CollectorRegistry()
    options = {"keep_seconds": 300.0, "max_bytes": 1 << 20, **limits}
    pending = PendingAnswers(database, registry, GatewayMetrics(metrics_registry), **options)  # type: ignore[arg-type]
    return pending, registry, metrics_registry


def saves(metrics: CollectorRegistry, result: str) -> float:
    return metrics.get_sample_value("vision_gateway_answer_saves_total", {"result": result}) or 0.0


async def test_answers_wait_held_and_are_written_oldest_first_when_the_database_returns() -> None:
    database = Database()
    pending, registry, metrics = make(database)
    first, second = final("first"), final("second")
    async with pending.running():
        assert pending.put(first)
        assert pending.put(second)
        await asyncio.sleep(0.2)
        assert set(registry.held()) == {first.message_id, second.message_id}, "their rows are kept alive"
        database.up = True
        for _ in range(100):
            if not len(pending):
                break
            await asyncio.sleep(0.05)
    assert database.written == [(first.message_id, "first", "complete"), (second.message_id, "second", "complete")]
    assert registry.held() == []
    assert (saves(metrics, "queued"), saves(metrics, "saved_late"), saves(metrics, "lost")) == (2, 2, 0)


async def test_answers_past_the_count_or_the_bytes_are_lost_and_counted() -> None:
    database = Database()
    by_count, _, count_metrics = make(database, max_count=2)
    assert by_count.put(final())
    assert by_count.put(final())
    assert not by_count.put(final())
    assert (saves(count_metrics, "queued"), saves(count_metrics, "lost")) == (2, 1)

    text = "é" * 1000  # 2000 bytes of UTF-8
    by_bytes, registry, bytes_metrics = make(database, max_bytes=2 * (2000 + ENTRY_OVERHEAD_BYTES))
    kept = [final(text), final(text)]
    assert all(by_bytes.put(answer) for answer in kept)
    assert not by_bytes.put(final(text))
    assert (saves(bytes_metrics, "queued"), saves(bytes_metrics, "lost")) == (2, 1)
    assert set(registry.held()) == {answer.message_id for answer in kept}, "a lost answer's row is not held"


async def test_an_answer_kept_past_the_queue_time_is_given_up() -> None:
    database = Database()
    pending, registry, metrics = make(database, keep_seconds=0.3)
    async with pending.running():
        pending.put(final())
        await asyncio.sleep(1.0)  # the retry 0.5 s after the first attempt finds it too old
        assert len(pending) == 0
    assert (saves(metrics, "lost"), saves(metrics, "saved_late")) == (1, 0)
    assert registry.held() == [], "no longer held: the sweeper closes its row"


async def test_keeping_none_loses_at_once() -> None:
    pending, registry, metrics = make(Database(), keep_seconds=0)
    assert not pending.put(final())
    assert (saves(metrics, "queued"), saves(metrics, "lost")) == (0, 1)
    assert registry.held() == []


async def test_shutdown_writes_what_it_can_and_counts_the_rest_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pending_module, "SHUTDOWN_DRAIN_SECONDS", 1.0)
    database = Database()
    pending, _, metrics = make(database)
    async with pending.running():
        pending.put(final("written at shutdown"))
        await asyncio.sleep(0.1)  # the first background attempt failed; the next is 0.5 s away
        database.up = True
    assert [content for _, content, _ in database.written] == ["written at shutdown"]
    assert saves(metrics, "saved_late") == 1

    down = Database()
    pending, registry, metrics = make(down)
    started = asyncio.get_running_loop().time()
    async with pending.running():
        pending.put(final())
    assert asyncio.get_running_loop().time() - started < 3, "shutdown gives up after SHUTDOWN_DRAIN_SECONDS"
    assert (saves(metrics, "lost"), len(pending), registry.held()) == (1, 0, [])
