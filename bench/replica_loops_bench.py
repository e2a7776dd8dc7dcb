"""The longest event-loop step of the gateway's per-replica loops over N streams, before/after in one run.

    .venv/bin/python -m bench.replica_loops_bench [ROUNDS] [LABEL=CHECKOUT ...]

In-process, no database, no sockets: the code of each checkout (PYTHONPATH) runs one
progress save (StreamLiveness.save_progress_once over an AnswerProgress book of N streams whose
text grew, the statement replaced by a stand-in that answers after 1 ms) and one heartbeat pass
with every stream due (Heartbeat over N EventStreams whose response only records the ping), on
the standard library's loop with every callback timed in CPU time of the thread (so that other
processes on the machine do not count): the longest is the longest the loop ran one piece of
this work in one go, what every held stream's next chunk would have waited for. For
N in 2,000 and 8,000; the checkouts take turns, reversed every round; the median of the rounds
is printed. The statement's own encoding (asyncpg, ~1 ms at 8,000 rows) is not in these figures.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench._stack import ROOT

SIZES = (2000, 8000)

# Runs in a fresh interpreter with the checkout under test first on sys.path.
MEASURE = """
import asyncio, gc, json, sys, time, uuid
from services.vision_gateway import streams as streams_module
from services.vision_gateway.chat.answer_text import AnswerText
from services.vision_gateway.chat.progress import Answer, AnswerProgress
from services.vision_gateway.sse import EventStream, Heartbeat
from services.vision_gateway.streams import StreamLiveness


class Growing:
    def __init__(self):
        self.content, self.answer_length = AnswerText(), 0

    def grow(self, words):
        for _ in range(words):
            self.content.append(" word")
        self.answer_length = len(self.content)

    def answer(self):
        return Answer(self.content.text(), "")


class Recorder:
    async def write(self, data):
        pass


async def statement(conn, rows, *, within):
    await asyncio.sleep(0.001)
    return {row.message_id for row in rows}


STEPS = []


def timed_run(original):
    def _run(handle):
        started = time.thread_time()
        original(handle)
        STEPS.append(time.thread_time() - started)

    return _run


asyncio.events.Handle._run = timed_run(asyncio.events.Handle._run)


async def longest_step(work):
    gc.collect()
    gc.freeze()  # the collector walking the set-up's objects is not what is measured
    await asyncio.sleep(0)  # nor is this step
    STEPS.clear()
    await work()
    return max(STEPS) * 1000


async def main(n):
    streams_module.save_progress = statement
    book, sources = AnswerProgress(interval=2.0), [Growing() for _ in range(n)]
    for source in sources:
        book.track(uuid.uuid4(), source)
        source.grow(40)
    liveness = StreamLiveness("unused", list, interval=20.0, progress=book)
    liveness.touched.set()

    async def connection():
        return None

    liveness._connection = connection
    await liveness.save_progress_once()  # the first save; the one measured is a later one
    for source in sources:
        source.grow(2)
    save = await longest_step(liveness.save_progress_once)

    heartbeat = Heartbeat(0.4)  # looks every 0.1 s
    for _ in range(n):
        stream = EventStream(heartbeat=heartbeat)
        stream.response = Recorder()
        stream.last_write = 0.0
        heartbeat.add(stream)

    async def one_pass():
        task = asyncio.create_task(heartbeat._run())
        await asyncio.sleep(0.25)
        task.cancel()

    ping = await longest_step(one_pass)
    return {"save_ms": save, "ping_ms": ping}


print(json.dumps(asyncio.run(main(int(sys.argv[1])))))
"""


def measure(root: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(n)], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    import json

    return dict(json.loads(out.stdout))


def main() -> None:
    args = sys.argv[1:]
    rounds = int(args.pop(0)) if args and args[0].isdigit() else 5
    checkouts = [(a.split("=", 1)[0], Path(a.split("=", 1)[1]).resolve()) for a in args] or [("after", ROOT)]
    results: dict[tuple[str, int], list[dict[str, float]]] = {(label, n): [] for label, _ in checkouts for n in SIZES}
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for round_ in range(rounds):
        order = checkouts if round_ % 2 == 0 else checkouts[::-1]
        for label, root in order:
            for n in SIZES:
                results[(label, n)].append(measure(root, n))
    for (label, n), runs in results.items():
        save = statistics.median(r["save_ms"] for r in runs)
        ping = statistics.median(r["ping_ms"] for r in runs)
        print(
            f"{label:>7} {n:5d} streams: longest loop step of a progress save {save:5.1f} ms, "
            f"of a heartbeat pass (all due) {ping:5.1f} ms (median of {len(runs)})"
        )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
