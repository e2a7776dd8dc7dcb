"""The gateway against its floor: server CPU per stream and added time to first token, one run.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.floor_bench [REPS] [STREAMS] [--hold N] [--before ROOT]

Five processes side by side: the Ollama emulator (50-word replies, no delay), the image-store,
the gateway (`retina vision-gateway`), and the floor (bench/floor_relay.py: the same SSE events
for the same emulator stream, without database, auth or metrics; for an image ID it fetches the
image once and keeps it). Each rep runs STREAMS streams one at a time against each target in
turn (the order rotates every rep), so a noisy minute on this shared machine hits all targets:

  direct           the emulator's /api/chat, straight (the TTFT baseline)
  floor, gateway   POST /api/stream-message, no image
  ... 1 image      the same with one image ID (a 145 KiB JPEG in the store)

Per target: the server process's CPU (utime + stime from /proc) per stream, the CPU of the
PostgreSQL backends connected to the bench database, the image-store's CPU per ask, and TTFT
p50/p99 as the client sees it. `--before ROOT` adds a second gateway running another checkout's
code (e.g. `git worktree add /tmp/before main`) as the targets "gateway before" and "gateway
before, 1 image", measured in the same interleaved reps. The machine's load averages are printed
with the figures.

`--hold N` then holds N streams (a chunk a second) in the floor and in the gateway, in turn, for
BENCH_HOLD_ROUNDS rounds (2; the order alternates), each target with a fresh emulator and a fresh
server process, with gateway_bench's held-streams client (BENCH_CLIENT_PROCS processes): RSS idle
and with all open, per stream; chunk delay beyond the interval, p50/p99; streams that never
started, ended early or were still open at the deadline; and per round the gateway against the
floor (RSS per stream as a ratio, chunk delay as a difference).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench._stack import (
    TOKEN,
    cpu_seconds,
    database_backend_pids,
    free_port,
    python_process,
    scratch_database,
    service,
    store_env,
)
from bench.gateway_bench import (
    Held,
    direct_ttft,
    emulator_process,
    gateway_env,
    gateway_ttft,
    held_gateway,
    hold,
    hold_emulator,
    percentile,
)
from bench.serving_cpu_bench import sample_jpeg, upload

REPLY_WORDS = "50"
WARM_UP_STREAMS = 5


@dataclass
class Target:
    name: str
    base: str
    server_pid: int
    image_ids: tuple[str, ...] = ()
    ttft: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # per stream, one value per rep
    postgres_ms: list[float] = field(default_factory=list)
    store_ms: list[float] = field(default_factory=list)

    def ask(self, session: aiohttp.ClientSession) -> Awaitable[float]:
        if self.name == "direct":
            return direct_ttft(session, self.base)
        return gateway_ttft(session, self.base, self.image_ids)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def store_requests(store: str) -> dict[str, float]:
    """Requests the image-store answered, by method and route, from its own /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{store}/metrics") as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("http_server_requests_total{") and "/metrics" not in line and "readyz" not in line:
            labels, value = line.rsplit(" ", 1)
            key = labels[labels.index("{") + 1 : -1]
            counts[key] = counts.get(key, 0) + float(value)
    return counts


def cpu_total(pids: set[int]) -> float:
    return sum(cpu_seconds(pids))


async def run_rep(
    session: aiohttp.ClientSession, target: Target, streams: int, postgres: Callable[[], set[int]], store_pid: int
) -> None:
    backends = postgres()
    server, pg, store = cpu_total({target.server_pid}), cpu_total(backends), cpu_total({store_pid})
    samples = [await target.ask(session) for _ in range(streams)]
    backends_after = postgres()
    # A backend that connected during the rep counts from its start; one that left is lost (rare).
    pg_after = cpu_total(backends | backends_after) - pg
    target.ttft += samples
    target.server_ms.append((cpu_total({target.server_pid}) - server) * 1000 / streams)
    target.postgres_ms.append(pg_after * 1000 / streams)
    target.store_ms.append((cpu_total({store_pid}) - store) * 1000 / streams)


async def measure(
    targets: list[Target], reps: int, streams: int, postgres: Callable[[], set[int]], store_pid: int
) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for target in targets:
            for _ in range(WARM_UP_STREAMS):
                await target.ask(session)
        for rep in range(reps):
            order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
            for target in order:
                await run_rep(session, target, streams, postgres, store_pid)
            print(f"  rep {rep + 1}/{reps} done, load average {load_average()}", flush=True)


def report(targets: dict[str, Target], streams: int) -> None:
    def ms(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({' '.join(f'{v:.2f}' for v in values)})"

    print(f"\n{streams} streams per rep, one at a time, {REPLY_WORDS}-word replies; medians (each rep)")
    print("target | server CPU ms/stream | PostgreSQL CPU ms/stream | image-store CPU ms/ask | TTFT p50 / p99 ms")
    for t in targets.values():
        p50, p99 = percentile(t.ttft, 50) * 1000, percentile(t.ttft, 99) * 1000
        print(f"{t.name} | {ms(t.server_ms)} | {ms(t.postgres_ms)} | {ms(t.store_ms)} | {p50:.2f} / {p99:.2f}")
    direct = targets["direct"]
    for gateway_name in ("gateway before", "gateway"):
        for suffix in ("", ", 1 image"):
            if f"{gateway_name}{suffix}" not in targets:
                continue
            gateway, floor = targets[f"{gateway_name}{suffix}"], targets[f"floor{suffix}"]
            ratios = [g / f for g, f in zip(gateway.server_ms, floor.server_ms, strict=True)]
            print(
                f"{gateway.name} / floor{suffix} server CPU per stream: median {statistics.median(ratios):.2f}x"
                f" (each rep: {' '.join(f'{r:.2f}' for r in ratios)})"
            )
            for name, base in (("emulator directly", direct), (f"floor{suffix}", floor)):
                for p in (50, 99):
                    added = (percentile(gateway.ttft, p) - percentile(base.ttft, p)) * 1000
                    print(f"  TTFT added by {gateway.name} vs {name}, p{p}: {added:+.2f} ms")
    for suffix in ("", ", 1 image"):
        floor = targets[f"floor{suffix}"]
        for p in (50, 99):
            added = (percentile(floor.ttft, p) - percentile(direct.ttft, p)) * 1000
            print(f"  TTFT added by floor{suffix} vs emulator directly, p{p}: {added:+.2f} ms")


def run(admin_url: str, reps: int, streams: int, before: Path | None = None) -> None:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(scratch_database(admin_url))
        ollama_port, store_port, gateway_port, floor_port = (free_port() for _ in range(4))
        ollama, store = f"http://127.0.0.1:{ollama_port}", f"http://127.0.0.1:{store_port}"
        emulator = stack.enter_context(emulator_process(ollama_port, "--reply-words", REPLY_WORDS))
        store_process = stack.enter_context(service("image-store", store_port, store_env(url, tmp / "images")))
        env = gateway_env(url, str(tmp / "images"), ollama, IMAGE_STORE_URL=store, DB_POOL_MAX_SIZE="10")
        gateway = stack.enter_context(service("vision-gateway", gateway_port, env))
        old = None
        if before is not None:
            before_port = free_port()
            old = stack.enter_context(service("vision-gateway", before_port, env, root=before))
        floor_args = ["-m", "bench.floor_relay", "--port", str(floor_port), "--ollama", ollama]
        floor = stack.enter_context(python_process([*floor_args, "--store", store, "--token", TOKEN], floor_port))
        image_id = upload(store, sample_jpeg())["id"]
        local = "http://127.0.0.1:{}".format
        targets = {
            t.name: t
            for t in (
                Target("direct", ollama, emulator.pid),
                Target("floor", local(floor_port), floor.pid),
                Target("gateway", local(gateway_port), gateway.pid),
                Target("floor, 1 image", local(floor_port), floor.pid, (image_id,)),
                Target("gateway, 1 image", local(gateway_port), gateway.pid, (image_id,)),
            )
        }
        if old is not None:
            targets["gateway before"] = Target("gateway before", local(before_port), old.pid)
            before_image = Target("gateway before, 1 image", local(before_port), old.pid, (image_id,))
            targets[before_image.name] = before_image
        print(f"load average before: {load_average()}", flush=True)
        asyncio.run(
            measure(
                list(targets.values()), reps, streams, lambda: database_backend_pids(admin_url, url), store_process.pid
            )
        )
        print(f"load average after: {load_average()}")
        requests = store_requests(store)
    report(targets, streams)
    asks = len(targets["gateway, 1 image"].ttft) + WARM_UP_STREAMS
    if "gateway before, 1 image" in targets:
        asks += len(targets["gateway before, 1 image"].ttft) + WARM_UP_STREAMS
    print(f"image-store requests per gateway ask about the image ({asks} asks, the floor's one fetch included):")
    for route, count in sorted(requests.items()):
        print(f"  {route}: {count / asks:.2f}")


@contextlib.contextmanager
def held_floor(ollama: str) -> Iterator[tuple[str, int]]:
    """The floor relay, for held streams: its base URL and pid."""
    port = free_port()
    with python_process(["-m", "bench.floor_relay", "--port", str(port), "--ollama", ollama], port) as floor:
        yield f"http://127.0.0.1:{port}", floor.pid


def hold_against_floor(admin_url: str, count: int, rounds: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    servers: dict[str, Callable[[str], contextlib.AbstractContextManager[tuple[str, int]]]] = {
        "floor": held_floor,
        "gateway": lambda ollama: held_gateway(admin_url, ollama),
    }
    results: dict[str, list[Held]] = {name: [] for name in servers}
    for round_ in range(rounds):
        for name in list(servers) if round_ % 2 == 0 else list(servers)[::-1]:
            port = free_port()
            with hold_emulator(port, count) as emulator, servers[name](f"http://127.0.0.1:{port}") as (base, pid):
                held = hold(base, count, pid, emulator.pid)
            results[name].append(held)
            print(f"round {round_ + 1} (load average {load_average()}) {held.line(name)}", flush=True)
    for round_, (floor, gateway) in enumerate(zip(results["floor"], results["gateway"], strict=True)):
        print(
            f"round {round_ + 1}: gateway / floor RSS per stream {gateway.kib_per_stream / floor.kib_per_stream:.2f}x"
            f" ({gateway.kib_per_stream:.1f} / {floor.kib_per_stream:.1f} KiB); chunk delay gateway - floor"
            f" p50 {gateway.delay_ms(50) - floor.delay_ms(50):+.1f} ms, p99 {gateway.delay_ms(99) - floor.delay_ms(99):+.1f} ms"
        )


def main() -> None:
    admin_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    args = sys.argv[1:]
    streams_held = 0
    if "--hold" in args:
        at = args.index("--hold")
        streams_held = int(args[at + 1])
        del args[at : at + 2]
    before = None
    if "--before" in args:
        at = args.index("--before")
        before = Path(args[at + 1]).resolve()
        del args[at : at + 2]
    reps = int(args[0]) if args else 5
    streams = int(args[1]) if len(args) > 1 else 100
    run(admin_url, reps, streams, before)
    if streams_held:
        print(f"\n{streams_held} held streams, floor and gateway; load average before: {load_average()}", flush=True)
        hold_against_floor(admin_url, streams_held, int(os.environ.get("BENCH_HOLD_ROUNDS", "2")))
        print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
