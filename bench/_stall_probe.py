"""Run a Python module (the gateway's `cli.main`) with an event-loop stall probe — bench only.

    BENCH_PROBE_DIR=/tmp/x python bench/_stall_probe.py cli.main vision-gateway ...

Run as a file path, not with -m, so that the module it runs comes from PYTHONPATH (the checkout
under test, which need not have this file). The product has no such hook: this wraps
`cli.runner.run_on_loop` from outside to start, on the service's own loop:

- a tick every TICK_SECONDS (a `call_later` chain); a tick later than due by more than
  STALL_SECONDS is a stall: the loop ran something else (one long callback, or one iteration with
  very many) for that long;
- `gc.callbacks` timing every collection with its generation, so a stall is attributed to the
  collections inside it;
- a watchdog thread that, while the loop has not ticked for STALL_SECONDS, samples the main
  thread's stack every SAMPLE_SECONDS: what the loop was running during the stall.

On each SIGUSR1 it writes `<n>.json` into BENCH_PROBE_DIR with what it saw since the previous one
(stalls, collections by generation, stack samples by the innermost frame of the repository's
code), then starts over.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from types import FrameType
from typing import Any

TICK_SECONDS = 0.005
STALL_SECONDS = 0.020
SAMPLE_SECONDS = 0.005
YOUNG_SIZES = bool(os.environ.get("BENCH_PROBE_YOUNG"))  # count the objects each young collection walks


class Probe:
    def __init__(self) -> None:
        self.reset()
        self.last_tick = time.perf_counter()
        self.last_tick_cpu = time.thread_time()
        self.samples: list[tuple[str, str]] = []  # taken by the watchdog since the last tick
        self.gc_started = self.gc_started_cpu = 0.0
        self.young = 0
        self.gc_since_tick: dict[int, float] = collections.defaultdict(float)
        self.skip_next = False
        self.gc_seconds = 0.0  # all collections so far: callbacks are timed without those inside them

    def reset(self) -> None:
        self.started = time.perf_counter()
        self.ticks = 0
        self.stalls: list[dict[str, Any]] = []
        self.collections: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.collections_cpu: dict[int, list[float]] = {0: [], 1: [], 2: []}  # the main thread's CPU time in each
        # (at, generation, ms, CPU ms, objects walked or -1): collections over 5 ms
        self.collection_list: list[tuple[float, int, float, float, int]] = []
        self.stall_stacks: collections.Counter[str] = collections.Counter()  # samples by innermost repo frame
        self.stall_leaf: collections.Counter[str] = collections.Counter()  # samples by innermost frame
        self.slow: dict[str, list[float]] = {}  # callbacks over SLOW_CALLBACK_SECONDS: count, total ms, max ms

    # --- on the loop
    def tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        self.last_tick = now
        cpu_since, self.last_tick_cpu = cpu - self.last_tick_cpu, cpu
        lag = now - due
        samples, self.samples = self.samples, []
        in_gc, self.gc_since_tick = self.gc_since_tick, collections.defaultdict(float)
        self.ticks += 1
        if self.skip_next:
            self.skip_next = False
        elif lag > STALL_SECONDS:
            self.stalls.append(
                {
                    "at": due - self.started,
                    "ms": lag * 1000,
                    "cpu_ms": cpu_since * 1000,  # CPU the loop's thread had since the tick before (5 ms + the lag)
                    "gc_ms": {g: s * 1000 for g, s in in_gc.items()},
                }
            )
            for repo_frame, leaf in samples:
                self.stall_stacks[repo_frame] += 1
                self.stall_leaf[leaf] += 1
        loop.call_later(TICK_SECONDS, self.tick, loop, time.perf_counter() + TICK_SECONDS)

    # --- gc.callbacks
    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.gc_started, self.gc_started_cpu = time.perf_counter(), time.thread_time()
            if YOUNG_SIZES and info["generation"] < 2:  # how many objects it is about to walk
                self.young = sum(len(gc.get_objects(g)) for g in range(info["generation"] + 1))
        else:
            spent = time.perf_counter() - self.gc_started
            self.collections[info["generation"]].append(spent * 1000)
            self.collections_cpu[info["generation"]].append((time.thread_time() - self.gc_started_cpu) * 1000)
            if spent > 0.005:
                self.collection_list.append(
                    (
                        self.gc_started - self.started,
                        info["generation"],
                        spent * 1000,
                        (time.thread_time() - self.gc_started_cpu) * 1000,
                        self.young if info["generation"] < 2 else -1,
                    )
                )
            self.gc_since_tick[info["generation"]] += spent
            self.gc_seconds += spent

    # --- the watchdog thread
    def watch(self, main_ident: int, roots: tuple[str, ...]) -> None:
        while True:
            time.sleep(SAMPLE_SECONDS)
            if time.perf_counter() - self.last_tick < STALL_SECONDS:
                continue
            frame: FrameType | None = sys._current_frames().get(main_ident)
            leaf = repo = None
            while frame is not None:
                code = frame.f_code
                where = f"{'/'.join(code.co_filename.rsplit('/', 2)[-2:])}:{code.co_name}:{frame.f_lineno}"
                if leaf is None:
                    leaf = where
                if repo is None and code.co_filename.startswith(roots):
                    path = code.co_filename
                    for root in roots:
                        path = path.removeprefix(root)
                    repo = f"{path}:{code.co_name}:{frame.f_lineno}"
                frame = frame.f_back
            self.samples.append((repo or "-", leaf or "-"))

    # --- slow callbacks (only on the standard library's loop: EVENT_LOOP=asyncio BENCH_PROBE_CALLBACKS=1)
    def slow_callback(self, handle: asyncio.Handle, seconds: float, before: str) -> None:
        callback = handle._callback  # type: ignore[attr-defined]
        task = getattr(callback, "__self__", None)
        if isinstance(task, asyncio.Task):
            name = getattr(task.get_coro(), "__qualname__", "?")
            what = f"task {task.get_name().split('-')[0]} {name} from {before} to {suspended_at(task)}"
        else:
            what = f"callback {getattr(callback, '__qualname__', repr(callback))}"
        entry = self.slow.setdefault(what, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += seconds * 1000
        entry[2] = max(entry[2], seconds * 1000)

    def report(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        stalls = [s["ms"] for s in self.stalls]
        buckets = {"20-50": 0, "50-100": 0, "100-200": 0, ">200": 0}
        for ms in stalls:
            key = "20-50" if ms < 50 else "50-100" if ms < 100 else "100-200" if ms < 200 else ">200"
            buckets[key] += 1
        gc_stalls = sum(1 for s in self.stalls if sum(s["gc_ms"].values()) >= 0.5 * s["ms"])
        busy = [s["ms"] for s in self.stalls if s["cpu_ms"] >= 0.5 * (s["ms"] + TICK_SECONDS * 1000)]
        return {
            "seconds": seconds,
            "ticks": self.ticks,
            "stalls": len(stalls),
            "stall_ms_total": sum(stalls),
            "stall_ms_max": max(stalls, default=0.0),
            "buckets": buckets,
            "stalls_mostly_gc": gc_stalls,
            "stalls_busy": len(busy),  # the loop's thread ran for at least half of it (not just waiting for a CPU)
            "stalls_busy_ms_total": sum(busy),
            "stall_list": self.stalls,
            "collections_over_5ms": list(self.collection_list),
            "collections": {
                g: {
                    "count": len(v),
                    "total_ms": sum(v),
                    "max_ms": max(v, default=0.0),
                    "over_20ms": sum(x > 20 for x in v),
                    "cpu_total_ms": sum(self.collections_cpu[g]),
                    "cpu_max_ms": max(self.collections_cpu[g], default=0.0),
                    "cpu_over_20ms": sum(x > 20 for x in self.collections_cpu[g]),
                }
                for g, v in self.collections.items()
            },
            "gc_count": gc.get_count(),
            "gc_threshold": gc.get_threshold(),
            "gc_freeze_count": gc.get_freeze_count(),
            "stall_samples_by_repo_frame": dict(self.stall_stacks.most_common(40)),
            "stall_samples_by_leaf": dict(self.stall_leaf.most_common(40)),
            "slow_callbacks": dict(sorted(self.slow.items(), key=lambda kv: -kv[1][1])[:40]),
        }


PROBE = Probe()
SLOW_CALLBACK_SECONDS = 0.005


def suspended_at(task: asyncio.Task[Any]) -> str:
    """The innermost coroutine frame the task waits in (file:function:line)."""
    awaitable: Any = task.get_coro()
    where = "-"
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            break
        where = f"{'/'.join(frame.f_code.co_filename.rsplit('/', 2)[-2:])}:{frame.f_code.co_name}:{frame.f_lineno}"
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return where


def time_callbacks() -> None:
    original = asyncio.events.Handle._run

    def _run(self: asyncio.Handle) -> None:
        try:
            task = getattr(self._callback, "__self__", None)  # type: ignore[attr-defined]
            before = suspended_at(task) if isinstance(task, asyncio.Task) else ""  # where it resumes
        except Exception as exc:
            before = repr(exc)
        started, in_gc = time.perf_counter(), PROBE.gc_seconds
        original(self)
        spent = time.perf_counter() - started - (PROBE.gc_seconds - in_gc)
        if spent > SLOW_CALLBACK_SECONDS:
            try:
                PROBE.slow_callback(self, spent, before)
            except Exception as exc:
                PROBE.slow.setdefault(f"probe failed: {exc!r}", [0, 0.0, 0.0])[0] += 1

    asyncio.events.Handle._run = _run  # type: ignore[method-assign]


def on_signal(_signum: int, _frame: FrameType | None) -> None:
    directory = Path(os.environ["BENCH_PROBE_DIR"])
    n = len(list(directory.glob("*.json")))
    data = PROBE.report()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a full collection would reclaim now: counted, sized, then freed
    data["cyclic_garbage_found"] = gc.collect()
    garbage = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    data["cyclic_garbage_bytes"] = sum(sys.getsizeof(o) for o in gc.garbage)
    data["cyclic_garbage_types"] = dict(garbage.most_common(15))
    gc.set_debug(0)
    gc.garbage.clear()
    gc.collect()
    objects = gc.get_objects()
    data["tracked_objects"] = len(objects)
    census = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
    data["census"] = dict(census.most_common(40))
    del objects
    partial = directory / f"{n}.part"
    partial.write_text(json.dumps(data))
    partial.rename(directory / f"{n}.json")
    PROBE.reset()
    PROBE.skip_next = True  # this report's own pause is not the service's


def install() -> None:
    import cli.runner

    original = cli.runner.run_on_loop

    def run_on_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
        async def probed() -> None:
            loop = asyncio.get_running_loop()
            loop.call_later(TICK_SECONDS, PROBE.tick, loop, time.perf_counter() + TICK_SECONDS)
            await main

        original(probed(), event_loop)

    cli.runner.run_on_loop = run_on_loop
    gc.callbacks.append(PROBE.on_gc)
    roots = tuple(str(Path(p).resolve()) + "/" for p in os.environ.get("PYTHONPATH", "").split(":") if p)
    threading.Thread(target=PROBE.watch, args=(threading.get_ident(), roots), daemon=True).start()
    signal.signal(signal.SIGUSR1, on_signal)
    if threshold := os.environ.get("BENCH_GC_THRESHOLD"):  # exploration: other thresholds, e.g. 700,10,100
        gc.set_threshold(*(int(t) for t in threshold.split(",")))
    if os.environ.get("BENCH_PROBE_CALLBACKS"):
        time_callbacks()


if __name__ == "__main__":
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    install()
    runpy.run_module(module, run_name="__main__", alter_sys=True)
