"""Run a Python module (the gateway's `cli.main`) with a memory report on SIGUSR1 — bench only.

    BENCH_PROBE_DIR=/tmp/x [PYTHONTRACEMALLOC=1] python bench/_memory_probe.py cli.main vision-gateway ...

Run as a file path, not with -m, so that the module it runs comes from PYTHONPATH (the checkout
under test, which need not have this file). On each SIGUSR1 it writes `<n>.json` into
BENCH_PROBE_DIR: resident and anonymous memory (/proc/self/smaps_rollup), glibc's mallinfo2
(bytes in use and free in malloc's arenas, bytes in mmap'd blocks), the Python heap
(tracemalloc's traced bytes when tracing, allocated blocks), and a census of the objects the
collector tracks by type; with tracemalloc on, the snapshot goes to `<n>.snapshot` too
(BENCH_TRACE_LATE=<frames>: tracing starts at the first probe, not with the process, whose
imports take ten times longer traced — too long for the readiness wait on a busy machine). The
product has no such hook: this wraps the process from outside.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import gc
import json
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mallinfo() -> dict[str, int]:
    name = ctypes.util.find_library("c")
    if name is None:
        return {}
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return {field: int(getattr(info, field)) for field, _ in MallInfo2._fields_}


def smaps() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def report(_signum: int, _frame: FrameType | None) -> None:
    directory = Path(os.environ["BENCH_PROBE_DIR"])
    late = int(os.environ.get("BENCH_TRACE_LATE", "0"))
    if late and not tracemalloc.is_tracing():  # traced from the first probe on: a quick start-up
        tracemalloc.start(late)
    n = len(list(directory.glob("*.json")))
    gc.collect()
    census = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    data = {
        "smaps": smaps(),
        "mallinfo": mallinfo(),
        "allocated_blocks": sys.getallocatedblocks(),
        "traced": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
        "gc_objects": sum(census.values()),
        "census": dict(census.most_common(150)),
    }
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(directory / f"{n}.snapshot"))
    partial = directory / f"{n}.part"
    partial.write_text(json.dumps(data))
    partial.rename(directory / f"{n}.json")


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, report)
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
