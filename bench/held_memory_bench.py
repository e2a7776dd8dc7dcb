"""Where a held stream's bytes go in the gateway: RSS, malloc, Python heap, objects (bench/RESULTS.md).

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.held_memory_bench [STREAMS] [ROUNDS] [--trace] [LABEL=CHECKOUT ...]

One gateway process (run through bench/_memory_probe.py, which reports on SIGUSR1) holds slow
streams from the emulator (a chunk a second). It is probed idle, with a quarter of STREAMS open,
and with all open (each after SETTLE_SECONDS); the figures per stream are the difference between
the last two probes divided by the streams opened between them (the marginal cost, free of what
the first streams warm up), and, like bench/held_streams_bench.py, all-open minus idle over all.
`--trace` runs the gateway with tracemalloc (BENCH_TRACE_FRAMES deep, 1 by default; started at
the idle probe) and prints the allocation sites that grew the most per stream (tracing costs
memory of its own: RSS figures are then not comparable);
BENCH_KEEP_SNAPSHOTS=<dir> keeps the two snapshots compared (`<label>-some`, `<label>-full`).
Checkouts (LABEL=path) are measured in turn, order reversed each round, as held_streams_bench.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp

from bench._stack import ROOT, free_port, python_process, scratch_database
from bench.gateway_bench import HEADERS, emulator_process, gateway_env
from bench.held_streams_bench import wait_for_final_writes

SETTLE_SECONDS = float(os.environ.get("BENCH_SETTLE_SECONDS", "8"))
CHUNK_DELAY = os.environ.get("BENCH_CHUNK_DELAY", "1.0")  # seconds between one stream's chunks
PROBE = ROOT / "bench" / "_memory_probe.py"
FAILED: list[str] = []  # streams that failed before their first chunk, this run


def probe(pid: int, directory: Path) -> dict[str, Any]:
    n = len(list(directory.glob("*.json")))
    os.kill(pid, signal.SIGUSR1)
    target = directory / f"{n}.json"
    deadline = time.monotonic() + 120
    while not target.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway did not answer the probe")
        time.sleep(0.1)
    data: dict[str, Any] = json.loads(target.read_text())
    data["snapshot"] = str(directory / f"{n}.snapshot")
    return data


async def open_streams(session: aiohttp.ClientSession, base: str, count: int, tasks: list[asyncio.Task[None]]) -> None:
    """Start `count` more streams; return once each has delivered its first chunk (or failed:
    a stream that ends or breaks before its first chunk is counted in FAILED and printed, so one
    lost stream does not hold the run up until the timeout)."""
    settled = 0
    done = asyncio.Event()

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == count:
            done.set()

    async def one() -> None:
        body = {"message": "hi", "model": "llava"}
        first = True
        try:
            async with session.post(f"{base}/api/stream-message", json=body, headers=HEADERS) as response:
                last = b""
                async for line in response.content:
                    if first and line.startswith(b'data: {"type":"chunk"'):
                        first = False
                        settle()
                    last = line if line.strip() else last
                if first:
                    raise RuntimeError(f"HTTP {response.status}, ended before its first chunk: {last[:300]!r}")
        except BaseException as exc:
            if first:
                first = False
                FAILED.append(repr(exc)[:400])
                settle()
            raise

    tasks.extend(asyncio.create_task(one()) for _ in range(count))
    await asyncio.wait_for(done.wait(), 600)


def per_stream(a: dict[str, Any], b: dict[str, Any], streams: int) -> dict[str, float]:
    def d(*path: str) -> float:
        x, y = a, b
        for key in path:
            x, y = x[key], y[key]
        return float(y - x) / streams

    out = {
        "rss": d("smaps", "Rss"),
        "anonymous": d("smaps", "Anonymous"),
        "malloc_in_use": d("mallinfo", "uordblks") + d("mallinfo", "hblkhd"),
        "malloc_free": d("mallinfo", "fordblks"),
        "malloc_arena": d("mallinfo", "arena"),
        "py_blocks": d("allocated_blocks"),
        "gc_objects": d("gc_objects"),
    }
    if a.get("traced") is not None:
        out["traced"] = d("traced")
    return out


def run_one(label: str, root: Path, admin_url: str, count: int, trace: bool) -> dict[str, Any]:
    quarter = max(1, count // 4)
    batch = int(os.environ.get("BENCH_OPEN_BATCH", "0")) or count
    with (
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryDirectory() as probes,
        scratch_database(admin_url) as url,
    ):
        ollama_port, gateway_port = free_port(), free_port()
        extra = {"DB_POOL_MAX_SIZE": "20", "PYTHONPATH": str(root), "BENCH_PROBE_DIR": probes}
        if trace:  # from the idle probe on (only the later two are compared)
            extra["BENCH_TRACE_LATE"] = os.environ.get("BENCH_TRACE_FRAMES", "1")
        env = gateway_env(url, tmp, f"http://127.0.0.1:{ollama_port}", **extra)
        args = [str(PROBE), "cli.main", "vision-gateway", "--host", "127.0.0.1", "--port", str(gateway_port)]
        with (
            emulator_process(ollama_port, "--reply-words", "3000", "--chunk-delay", CHUNK_DELAY),
            python_process(args, gateway_port, env, name="vision-gateway", root=root) as gateway,
        ):
            directory = Path(probes)
            base = f"http://127.0.0.1:{gateway_port}"

            async def main() -> list[dict[str, Any]]:
                connector = aiohttp.TCPConnector(limit=0)
                timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
                tasks: list[asyncio.Task[None]] = []
                probes_: list[dict[str, Any]] = []
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                    await asyncio.sleep(1)
                    probes_.append(await asyncio.to_thread(probe, gateway.pid, directory))
                    for n in (quarter, count - quarter):
                        for start in range(0, n, batch):
                            await open_streams(session, base, min(batch, n - start), tasks)
                        await asyncio.sleep(SETTLE_SECONDS)
                        probes_.append(await asyncio.to_thread(probe, gateway.pid, directory))
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                return probes_

            FAILED.clear()
            idle, some, full = asyncio.run(main())
            if FAILED:
                print(f"  {label}: {len(FAILED)} streams failed before their first chunk, e.g. {FAILED[0]}")
            wait_for_final_writes(url)
            result: dict[str, Any] = {
                "label": label,
                "marginal": per_stream(some, full, count - quarter),
                "overall": per_stream(idle, full, count),
                "census": {
                    k: (full["census"].get(k, 0) - some["census"].get(k, 0)) / (count - quarter) for k in full["census"]
                },
            }
            if trace:
                if keep := os.environ.get("BENCH_KEEP_SNAPSHOTS"):  # a directory: for a closer look afterwards
                    for name, probed in (("some", some), ("full", full)):
                        shutil.copy(probed["snapshot"], Path(keep) / f"{label}-{name}.snapshot")
                before = tracemalloc.Snapshot.load(some["snapshot"])
                after = tracemalloc.Snapshot.load(full["snapshot"])
                result["sites"] = [
                    (str(s.traceback), s.size_diff / (count - quarter), s.count_diff / (count - quarter))
                    for s in after.compare_to(before, "lineno")[:60]
                ]
                ours: dict[str, list[float]] = {}
                for diff in after.compare_to(before, "traceback"):
                    frames = list(diff.traceback)[::-1]  # most recent first
                    mine = next((f for f in frames if f.filename.startswith(str(root))), None)
                    key = (
                        f"ours {mine.filename}:{mine.lineno}"
                        if mine
                        else f"(not under ours) {frames[0].filename}:{frames[0].lineno}"
                    )
                    entry = ours.setdefault(key, [0.0, 0.0])
                    entry[0] += diff.size_diff / (count - quarter)
                    entry[1] += diff.count_diff / (count - quarter)
                result["ours"] = sorted(((k, v[0], v[1]) for k, v in ours.items()), key=lambda x: -x[1])[:50]
                result["files"] = [
                    (str(s.traceback), s.size_diff / (count - quarter), s.count_diff / (count - quarter))
                    for s in after.compare_to(before, "filename")[:30]
                ]
            return result


def show(result: dict[str, Any], load: float) -> None:
    m, o = result["marginal"], result["overall"]
    print(f"== {result['label']} (load {load:.1f})")
    print("  bytes per stream   marginal  overall")
    for key in m:
        print(f"  {key:<16} {m[key]:>9.0f} {o[key]:>8.0f}")
    top = sorted(result["census"].items(), key=lambda kv: -kv[1])[:25]
    print("  objects per stream (collector-tracked): " + ", ".join(f"{k} {v:.2f}" for k, v in top if v >= 0.05))
    for site, size, number in result.get("ours", []):
        print(f"  {size:>8.0f} B {number:>6.2f} blocks  {site}")
    for site, size, number in result.get("files", []):
        print(f"  {size:>8.0f} B {number:>6.2f} blocks  {site}")
    for site, size, number in result.get("sites", []):
        print(f"  {size:>8.0f} B {number:>6.2f} blocks  {site}")


def main() -> None:
    admin_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    args = sys.argv[1:]
    trace = "--trace" in args
    args = [a for a in args if a != "--trace"]
    count = int(args.pop(0)) if args and args[0].isdigit() else 2000
    rounds = int(args.pop(0)) if args and args[0].isdigit() else 1
    checkouts = [(a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in args] or [("after", ROOT)]
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    medians: dict[str, list[float]] = {label: [] for label, _ in checkouts}
    for round_ in range(rounds):
        for label, root in checkouts if round_ % 2 == 0 else checkouts[::-1]:
            load = os.getloadavg()[0]
            result = run_one(label, root, admin_url, count, trace)
            medians[label].append(result["marginal"]["rss"])
            show(result, load)
    for label, values in medians.items():
        print(
            f"median RSS per stream, marginal, {label}: {statistics.median(values) / 1024:.1f} KiB ({len(values)} runs)"
        )


if __name__ == "__main__":
    main()
