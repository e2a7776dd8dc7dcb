"""Issue 19 item 2: a replica saves the partial answers of all its streams in one statement per interval.

Proved against the real database: a row trigger records which transaction wrote each streaming
row's text, so the test sees how many statements carried how many streams; a final answer is never
overwritten by a batch that comes after it (or while it is being written).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from common.db import open_pool
from services.vision_gateway.chat.progress import Answer, AnswerProgress
from services.vision_gateway.repository import ProgressRow, save_progress
from services.vision_gateway.repository.turns import TurnQueries
from services.vision_gateway.streams import StreamLiveness
from tests.vision_gateway.conftest import Stack, ask, read_sse

# One row per progress write of a streaming row's text, with the transaction that wrote it.
RECORD_PROGRESS_WRITES = """
CREATE TABLE progress_writes (txid bigint NOT NULL, message_id uuid NOT NULL);
CREATE FUNCTION record_progress_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO progress_writes VALUES (txid_current(), NEW.id);
    RETURN NEW;
END $$;
CREATE TRIGGER record_progress_write AFTER UPDATE ON messages FOR EACH ROW
    WHEN (OLD.status = 'streaming' AND NEW.status = 'streaming' AND OLD.content IS DISTINCT FROM NEW.content)
    EXECUTE FUNCTION record_progress_write();
"""
STREAMS = 8


async def test_all_streams_progress_is_saved_in_one_statement_per_interval(
    stack: Stack, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.vision_gateway.chat.progress as progress

    monkeypatch.setattr(progress, "PROGRESS_SAVE_SECONDS", 0.3)  # read when a gateway starts
    gateway = await stack.make_gateway()
    await db.execute(RECORD_PROGRESS_WRITES)
    for model in stack.emulator.models:
        model.reply = " ".join(f"word{i}" for i in range(25))
    stack.emulator.chunk_delay = 0.1  # 2.5 s per answer: about 8 intervals
    responses = await asyncio.gather(*(ask(gateway, {"message": "hi", "model": "llava"}) for _ in range(STREAMS)))
    results = [await read_sse(response) for response in responses]

    assert [r.events[-1]["type"] for r in results] == ["done"] * STREAMS
    rows = await db.fetch("SELECT status, content FROM messages WHERE role = 'assistant'")
    assert sorted((r["status"], r["content"]) for r in rows) == sorted(("complete", r.text) for r in results)
    per_statement = await db.fetch("SELECT txid, count(*) AS streams FROM progress_writes GROUP BY txid")
    writes = sum(r["streams"] for r in per_statement)
    assert writes >= 3 * STREAMS, f"progress was saved while streaming ({writes} row writes)"
    assert max(r["streams"] for r in per_statement) == STREAMS, "one statement carried every stream"
    # Per-stream saves would be one statement per row write; batched ones carry several each.
    assert len(per_statement) * 3 <= writes, f"{len(per_statement)} statements for {writes} row writes"


@pytest.fixture
async def turns(database_url: str) -> AsyncIterator[TurnQueries]:
    async with open_pool(database_url, min_size=1, max_size=2) as pool:
        yield TurnQueries(pool)


async def streaming_row(turns: TurnQueries) -> uuid.UUID:
    turn = await turns.start_turn(
        owner_id="alice", conversation_id=None, content="hi", model="llava", image_ids=[], stream_id=uuid.uuid4()
    )
    return turn.assistant_message_id


async def test_a_batch_never_overwrites_a_final_answer(turns: TurnQueries, db: asyncpg.Connection) -> None:
    finished, live = await streaming_row(turns), await streaming_row(turns)
    await turns.finish_turn(finished, content="Hello there.", status="complete", error=None, stats={})
    batch = [ProgressRow(finished, "Hel", ""), ProgressRow(live, "Hel", "hmm")]

    assert await save_progress(db, batch, within=5) == {live}, "only the row still streaming is written"
    rows = {r["id"]: r for r in await db.fetch("SELECT id, status, content, thinking FROM messages")}
    assert (rows[finished]["status"], rows[finished]["content"]) == ("complete", "Hello there.")
    assert (rows[live]["status"], rows[live]["content"], rows[live]["thinking"]) == ("streaming", "Hel", "hmm")


async def test_a_batch_skips_a_row_whose_final_write_is_under_way(
    turns: TurnQueries, db: asyncpg.Connection, database_url: str
) -> None:
    """The final write holds the row: the batch neither waits for it nor overwrites it afterwards."""
    message_id = await streaming_row(turns)
    final = await asyncpg.connect(database_url)
    try:
        transaction = final.transaction()
        await transaction.start()
        await final.execute(
            "UPDATE messages SET content = 'Hello there.', status = 'complete' WHERE id = $1", message_id
        )
        # A batch that waited for the lock would time out here instead of returning.
        assert await save_progress(db, [ProgressRow(message_id, "Hel", "")], within=1) == set()
        await transaction.commit()
    finally:
        await final.close()
    row = await db.fetchrow("SELECT status, content FROM messages WHERE id = $1", message_id)
    assert (row["status"], row["content"]) == ("complete", "Hello there.")


async def test_a_row_locked_for_a_moment_is_saved_at_the_next_interval(
    turns: TurnQueries, db: asyncpg.Connection, database_url: str
) -> None:
    """A row another transaction holds (an image being linked to it) is skipped, not counted as saved."""
    message_id = await streaming_row(turns)
    book = AnswerProgress(interval=1.0)
    answer = Growing()
    book.track(message_id, answer)
    answer.grow("Hello")
    liveness = StreamLiveness(database_url, list, interval=1.0, progress=book)
    liveness.touched.set()  # as after a successful touch: saves go out only then
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", message_id)
            assert await liveness.save_progress_once() == 0
        assert [row.message_id for row in await book.unsaved()] == [message_id], "still offered after the skip"
        assert await liveness.save_progress_once() == 1
        assert await book.unsaved() == []
    finally:
        await holder.close()
        await liveness._close()
    assert await db.fetchval("SELECT content FROM messages WHERE id = $1", message_id) == "Hello"


class Growing:
    """A stream's answer as StreamRelay keeps it: pieces and their length."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.answer_length = 0

    def grow(self, text: str) -> None:
        self.pieces.append(text)
        self.answer_length += len(text)

    def answer(self) -> Answer:
        return Answer("".join(self.pieces))


async def test_the_book_offers_only_grown_answers_and_takes_turns_when_limited() -> None:
    book = AnswerProgress(interval=1.0)
    ids = [uuid.uuid4() for _ in range(3)]
    streams = [Growing() for _ in ids]
    for message_id, stream in zip(ids, streams, strict=True):
        book.track(message_id, stream)
    assert await book.unsaved() == [], "nothing grew yet"
    for stream in streams:
        stream.grow("Hi")
    first = await book.unsaved(limit=2)
    assert [row.message_id for row in first] == ids[:2]
    await book.saved(first)
    assert [row.message_id for row in await book.unsaved()] == [ids[2]], "saved ones are not offered again"
    for stream in streams:
        stream.grow(" there")
    assert [row.message_id for row in await book.unsaved(limit=2)] == [ids[2], ids[0]], "the longest unsaved first"
    book.untrack(ids[2])
    assert [row.content for row in await book.unsaved()] == ["Hi there", "Hi there"]


def grown_book(count: int) -> tuple[AnswerProgress, list[uuid.UUID], list[Growing]]:
    book = AnswerProgress(interval=1.0)
    ids, streams = [uuid.uuid4() for _ in range(count)], [Growing() for _ in range(count)]
    for message_id, stream in zip(ids, streams, strict=True):
        book.track(message_id, stream)
        stream.grow("Hi")
    return book, ids, streams


async def test_the_book_gathers_many_streams_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between slices the event loop runs other work (here: a stream ends); every stream is reached."""
    import services.vision_gateway.chat.progress as progress

    monkeypatch.setattr(progress, "SLICE_STREAMS", 2)
    book, ids, _ = grown_book(5)
    assert [row.message_id for row in await book.unsaved()] == ids, "every stream, across three slices"

    asyncio.get_running_loop().call_soon(book.untrack, ids[4])  # runs at the first yield, after two streams
    rows = await book.unsaved()
    assert [row.message_id for row in rows] == ids[:4], "the stream that ended meanwhile is left out"

    saving = asyncio.create_task(book.saved(rows))
    await asyncio.sleep(0)
    assert not saving.done(), "marking four rows saved yields too"
    await saving
    assert await book.unsaved() == [], "every row written is marked saved"


async def test_a_save_larger_than_a_slice_writes_every_row_in_one_statement(
    turns: TurnQueries, db: asyncpg.Connection, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.vision_gateway.chat.progress as progress

    monkeypatch.setattr(progress, "SLICE_STREAMS", 2)
    await db.execute(RECORD_PROGRESS_WRITES)
    book = AnswerProgress(interval=1.0)
    ids = [await streaming_row(turns) for _ in range(5)]
    for index, message_id in enumerate(ids):
        answer = Growing()
        answer.grow(f"Hello {index}")
        book.track(message_id, answer)
    liveness = StreamLiveness(database_url, list, interval=1.0, progress=book)
    liveness.touched.set()  # as after a successful touch: saves go out only then
    try:
        assert await liveness.save_progress_once() == 5
    finally:
        await liveness._close()
    rows = await db.fetch("SELECT id, content FROM messages WHERE id = ANY($1::uuid[])", ids)
    assert sorted(r["content"] for r in rows) == [f"Hello {i}" for i in range(5)]
    assert await db.fetchval("SELECT count(DISTINCT txid) FROM progress_writes") == 1, "one statement"
    assert await book.unsaved() == []
