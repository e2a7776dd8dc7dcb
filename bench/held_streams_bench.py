"""Held slow streams: what each costs the gateway and PostgreSQL, before/after in one run (bench/RESULTS.md).

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.held_streams_bench [STREAMS] [ROUNDS] [LABEL=CHECKOUT ...]

One gateway process holds STREAMS (default 2000) open streams, the emulator (its own process)
sending a chunk per second to each. Once all are open and a few seconds have passed, a window of
WINDOW_SECONDS is measured:

- gateway CPU: utime + stime of its process (/proc/<pid>/stat), as a share of one core;
- PostgreSQL CPU: the same for every server backend connected to the benchmark's database;
- PostgreSQL transactions per second (pg_stat_database.xact_commit; each of the gateway's writes
  is a statement in a transaction of its own) and rows updated per second (tup_updated);
- RSS per held stream: the gateway's resident memory with all open minus before the first;
- chunk delay: how much later than the emulator's 1 s interval each chunk reached the client.

Each LABEL=CHECKOUT is a checkout whose code the gateway runs (e.g. before=/tmp/wt-before, a
`git worktree add --detach` of the base commit); without any, this checkout alone ("after"; name
it too, after=., to compare it with others). The checkouts are measured in turn, their order
reversed every round, so machine load hits all alike.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench._stack import ROOT, free_port, rss_bytes, scratch_database, service
from bench.gateway_bench import Tally, emulator_process, gateway_env, held_session, open_streams, percentile

CHUNK_INTERVAL = 1.0
# Long enough for idle backends to flush their counters of the ramp-up (PostgreSQL: every 10 s).
SETTLE_SECONDS = 12.0
WINDOW_SECONDS = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process; 0 for a process that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Snapshot:
    at: float
    gateway_cpu: float
    backend_cpu: dict[int, float]
    commits: int
    updated: int


def snapshot(admin: psycopg.Connection, database: str, gateway_pid: int) -> Snapshot:
    pids = [r[0] for r in admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))]
    admin.execute("SELECT pg_stat_clear_snapshot()")
    commits, updated = admin.execute(
        "SELECT xact_commit, tup_updated FROM pg_stat_database WHERE datname = %s", (database,)
    ).fetchone() or (0, 0)
    return Snapshot(time.monotonic(), cpu_seconds(gateway_pid), {p: cpu_seconds(p) for p in pids}, commits, updated)


@dataclass
class Result:
    label: str
    opened: int
    gateway_cpu: float  # share of one core
    postgres_cpu: float
    commits_per_second: float
    updates_per_second: float
    kib_per_stream: float
    delay_p50_ms: float
    delay_p99_ms: float
    gaps: int

    def line(self) -> str:
        return (
            f"{self.label:>8}: {self.opened} open; gateway CPU {self.gateway_cpu * 100:.1f}% of a core, "
            f"PostgreSQL backends {self.postgres_cpu * 100:.1f}%; {self.commits_per_second:.1f} transactions/s, "
            f"{self.updates_per_second:.0f} rows updated/s; {self.kib_per_stream:.1f} KiB per stream; "
            f"chunk delay p50 {self.delay_p50_ms:.1f} ms, p99 {self.delay_p99_ms:.1f} ms ({self.gaps} gaps)"
        )


def wait_for_final_writes(url: str, seconds: float = 120.0) -> None:
    """Let the gateway store the closed streams' answers before it is stopped (and the database dropped)."""
    deadline = time.monotonic() + seconds
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if not (conn.execute("SELECT count(*) FROM messages WHERE status = 'streaming'").fetchone() or (0,))[0]:
                return
            time.sleep(0.5)


def run_one(label: str, root: Path, admin_url: str, count: int) -> Result:
    reply_words = int(WINDOW_SECONDS + SETTLE_SECONDS + 120)  # streams outlive a slow ramp-up
    with tempfile.TemporaryDirectory() as tmp, scratch_database(admin_url) as url:
        database = url.rsplit("/", 1)[1]
        ollama_port, gateway_port = free_port(), free_port()
        env = gateway_env(url, tmp, f"http://127.0.0.1:{ollama_port}", DB_POOL_MAX_SIZE="20", PYTHONPATH=str(root))
        with (
            emulator_process(ollama_port, "--reply-words", str(reply_words), "--chunk-delay", str(CHUNK_INTERVAL)),
            service("vision-gateway", gateway_port, env, root=root) as gateway,
            psycopg.connect(admin_url, autocommit=True) as admin,
        ):
            idle_rss = rss_bytes(gateway.pid)

            async def main() -> tuple[Snapshot, Snapshot, int, Tally, list[float]]:
                tally = Tally()
                async with held_session() as session:
                    tasks = await open_streams(session, f"http://127.0.0.1:{gateway_port}", count, tally)
                    await asyncio.sleep(SETTLE_SECONDS)
                    held_rss = rss_bytes(gateway.pid)
                    first = await asyncio.to_thread(snapshot, admin, database, gateway.pid)
                    await asyncio.sleep(WINDOW_SECONDS)
                    last = await asyncio.to_thread(snapshot, admin, database, gateway.pid)
                    gaps = [gap for at, gap in tally.gaps if first.at <= at <= last.at]
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                return first, last, held_rss, tally, gaps

            first, last, held_rss, tally, gaps = asyncio.run(main())
            wait_for_final_writes(url)
    seconds = last.at - first.at
    backend = sum(cpu - first.backend_cpu.get(pid, 0.0) for pid, cpu in last.backend_cpu.items())
    late = [g - CHUNK_INTERVAL for g in gaps] or [0.0]
    return Result(
        label,
        tally.count("held"),
        (last.gateway_cpu - first.gateway_cpu) / seconds,
        backend / seconds,
        (last.commits - first.commits) / seconds,
        (last.updated - first.updated) / seconds,
        (held_rss - idle_rss) / count / 1024,
        percentile(late, 50) * 1000,
        percentile(late, 99) * 1000,
        len(gaps),
    )


def main() -> None:
    admin_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    args = sys.argv[1:]
    count = int(args.pop(0)) if args and args[0].isdigit() else 2000
    rounds = int(args.pop(0)) if args and args[0].isdigit() else 1
    checkouts = [(a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in args] or [("after", ROOT)]
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    results: dict[str, list[Result]] = {label: [] for label, _ in checkouts}
    for round_ in range(rounds):
        order = checkouts if round_ % 2 == 0 else checkouts[::-1]
        for label, root in order:
            load = os.getloadavg()[0]
            result = run_one(label, root, admin_url, count)
            results[label].append(result)
            print(f"round {round_ + 1} (load {load:.1f}) {result.line()}", flush=True)
    for label, runs in results.items():

        def median(name: str, runs: list[Result] = runs) -> float:
            return float(statistics.median(getattr(r, name) for r in runs))

        middle = Result(
            label,
            count,
            median("gateway_cpu"),
            median("postgres_cpu"),
            median("commits_per_second"),
            median("updates_per_second"),
            median("kib_per_stream"),
            median("delay_p50_ms"),
            median("delay_p99_ms"),
            sum(r.gaps for r in runs),
        )
        print(f"median  {middle.line()}")


if __name__ == "__main__":
    main()
