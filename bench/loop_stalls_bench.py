"""What stalls the gateway's event loop while it holds many slow streams, before/after in one run.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.loop_stalls_bench [STREAMS] [ROUNDS] [LABEL=CHECKOUT ...]

The scenario is `bench.gateway_bench hold`'s: STREAMS (default 2000) streams opened at once
against one gateway process, the emulator (its own process) sending each 12 words a second
apart; the client records every gap between two chunks of a stream, from the first chunk to the
last, and reports how much later than the emulator's 1 s interval they came (p50/p99).

BENCH_MODE=silent: the streams stay silent instead (the emulator's first word comes after
SILENT_SECONDS, as in a slow model load), the gateway pings each every PING_SECONDS, and the
client reports how much later than that the pings came (the heartbeat looks every PING_SECONDS/4,
so up to a quarter of it is by design).

The gateway runs under bench/_stall_probe.py, which reports, over the same span (reset when the
first stream is opened, read when the last has ended): every stall of its event loop longer than
20 ms (a 5 ms tick that came that much late) with a histogram, the cyclic garbage collector's
collections by generation (count, longest, how many over 20 ms), how many stalls were mostly
collections, and where the main thread was (stack samples every 5 ms during stalls, by the
innermost frame of the repository's code). Also: the gateway's CPU seconds over that span.

Each LABEL=CHECKOUT is a checkout whose code the gateway runs (e.g. before=/work/wt-x-before),
optionally followed by @NAME=VALUE settings for its environment;
without any, this checkout alone. The checkouts are measured in turn, their order reversed every
round, so machine load hits all alike; the load average is printed with each run.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._stack import ROOT, free_port, python_process, scratch_database
from bench.gateway_bench import HEADERS, emulator_process, gateway_env, percentile
from bench.held_streams_bench import cpu_seconds

CHUNK_INTERVAL = 1.0
REPLY_WORDS = 12
SILENT_SECONDS = 24.0
PING_SECONDS = 2.0
PROBE = ROOT / "bench" / "_stall_probe.py"


@dataclass
class Result:
    label: str
    load: float
    delay_p50_ms: float
    delay_p99_ms: float
    gaps: int
    cpu_seconds: float
    probe: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        p = self.probe
        gen = ", ".join(
            f"gen{g} {c['count']}x, CPU max {c['cpu_max_ms']:.0f} ms, {c['cpu_over_20ms']} over 20 ms, "
            f"{c['cpu_total_ms']:.0f} ms in all"
            for g, c in sorted(p["collections"].items())
        )
        buckets = " ".join(f"{k}:{v}" for k, v in p["buckets"].items())
        return (
            f"{self.label:>7} (load {self.load:.2f}): delay p50 {self.delay_p50_ms:.1f} ms p99 "
            f"{self.delay_p99_ms:.1f} ms ({self.gaps} gaps); gateway CPU {self.cpu_seconds:.1f} s; "
            f"loop stalls >20 ms: {p['stalls']} [{buckets}] max {p['stall_ms_max']:.0f} ms, "
            f"{p['stall_ms_total']:.0f} ms in all; busy (the loop's thread on a CPU for most of it): "
            f"{p['stalls_busy']}, {p['stalls_busy_ms_total']:.0f} ms; {p['stalls_mostly_gc']} mostly GC; "
            f"collections: {gen}; {p['tracked_objects']} tracked objects at the end"
        )


async def hold(base: str, count: int, gaps: list[float], signal_probe: Any, marker: bytes) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)

    opened = 0
    peak_report = bool(os.environ.get("BENCH_PEAK_REPORT"))  # diagnosis: a probe report when all are open

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal opened
        body = {"message": "hi", "model": "llava"}
        async with session.post(f"{base}/api/stream-message", json=body, headers=HEADERS) as response:
            last = None
            async for line in response.content:
                if line.startswith(marker):
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    else:
                        opened += 1
                        if opened == count and peak_report:
                            signal_probe()
                    last = now

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        signal_probe()  # start counting
        outcomes = await asyncio.gather(*(one(session) for _ in range(count)), return_exceptions=True)
        signal_probe()  # report
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        print(f"  {len(failed)} streams failed, e.g. {failed[0]!r}", flush=True)


def checkout(arg: str) -> tuple[str, Path, dict[str, str]]:
    """LABEL=CHECKOUT[@NAME=VALUE...]: the gateway's environment gets the NAME=VALUE pairs too."""
    label, rest = arg.split("=", 1)
    path, *pairs = rest.split("@")
    return label, Path(path).resolve(), dict(pair.split("=", 1) for pair in pairs)


def run_one(label: str, root: Path, admin_url: str, count: int, extra: dict[str, str]) -> Result:
    load = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryDirectory() as probe_dir,
        scratch_database(admin_url) as url,
    ):
        ollama_port, gateway_port = free_port(), free_port()
        silent = os.environ.get("BENCH_MODE") == "silent"
        if silent:
            upstream = ("--reply-words", "2", "--first-token-delay", str(SILENT_SECONDS))
            interval, marker = PING_SECONDS, b": ping"
        else:
            upstream = ("--reply-words", str(REPLY_WORDS), "--chunk-delay", str(CHUNK_INTERVAL))
            interval, marker = CHUNK_INTERVAL, b'data: {"type":"chunk"'
        env = gateway_env(
            url,
            tmp,
            f"http://127.0.0.1:{ollama_port}",
            DB_POOL_MAX_SIZE="20",
            SSE_HEARTBEAT_SECONDS=str(PING_SECONDS if silent else 15),
            PYTHONPATH=str(root),
            BENCH_PROBE_DIR=probe_dir,
            **extra,
        )
        args = [str(PROBE), "cli.main", "vision-gateway", "--host", "127.0.0.1", "--port", str(gateway_port)]
        with (
            emulator_process(ollama_port, *upstream),
            python_process(args, gateway_port, env, name="vision-gateway", root=root) as gateway,
        ):
            gaps: list[float] = []
            marks: list[float] = []

            def signal_probe() -> None:
                marks.append(cpu_seconds(gateway.pid))
                gateway.send_signal(signal.SIGUSR1)

            asyncio.run(hold(f"http://127.0.0.1:{gateway_port}", count, gaps, signal_probe, marker))
            report = Path(probe_dir) / f"{len(marks) - 1}.json"
            deadline = time.monotonic() + 60
            while not report.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            probe = json.loads(report.read_text())
            if keep := os.environ.get("BENCH_PROBE_KEEP"):  # a directory for the probe's reports
                for n, part in enumerate(sorted(Path(probe_dir).glob("*.json"))):
                    (Path(keep) / f"{label}-{time.strftime('%H%M%S')}-{n}.json").write_text(part.read_text())
    late = [g - interval for g in gaps] or [0.0]
    return Result(
        label,
        load,
        percentile(late, 50) * 1000,
        percentile(late, 99) * 1000,
        len(gaps),
        marks[-1] - marks[0],
        probe,
    )


def main() -> None:
    admin_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    args = sys.argv[1:]
    count = int(args.pop(0)) if args and args[0].isdigit() else 2000
    rounds = int(args.pop(0)) if args and args[0].isdigit() else 1
    checkouts = [checkout(a) for a in args] or [("after", ROOT, {})]
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    results: dict[str, list[Result]] = {label: [] for label, _, _ in checkouts}
    for round_ in range(rounds):
        order = checkouts if round_ % 2 == 0 else checkouts[::-1]
        for label, root, extra in order:
            result = run_one(label, root, admin_url, count, extra)
            results[label].append(result)
            print(f"round {round_ + 1} {result.line()}", flush=True)
            if os.environ.get("BENCH_VERBOSE"):
                print("  where the loop was during stalls (5 ms samples):", flush=True)
                for where, n in list(result.probe["stall_samples_by_repo_frame"].items())[:15]:
                    print(f"    {n:5d}  {where}")
                for where, n in list(result.probe["stall_samples_by_leaf"].items())[:10]:
                    print(f"    {n:5d}  leaf {where}")
                for what, (n, total, longest) in list(result.probe.get("slow_callbacks", {}).items())[:25]:
                    print(f"    {n:5.0f} x, {total:6.0f} ms, max {longest:4.0f} ms  {what}")
    for label, runs in results.items():

        def median(value: Any, runs: list[Result] = runs) -> float:
            return float(statistics.median(value(r) for r in runs))

        print(
            f"median {label:>7}: delay p50 {median(lambda r: r.delay_p50_ms):.1f} ms "
            f"p99 {median(lambda r: r.delay_p99_ms):.1f} ms; "
            f"{median(lambda r: r.probe['stalls']):.0f} loop stalls >20 ms, "
            f"{median(lambda r: r.probe['stall_ms_total']):.0f} ms stalled; "
            f"{median(lambda r: r.probe['stalls_busy']):.0f} busy, "
            f"{median(lambda r: r.probe['stalls_busy_ms_total']):.0f} ms; "
            f"full collections {median(lambda r: r.probe['collections']['2']['count']):.0f}; "
            f"gateway CPU {median(lambda r: r.cpu_seconds):.1f} s"
        )


if __name__ == "__main__":
    main()
