"""vision-gateway benchmarks, run by hand (figures in bench/RESULTS.md).

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.gateway_bench [ttft|hold|prep|all]

ttft: time to first token through the gateway vs straight to the emulator, p50/p99, at 1 and 100
      concurrent streams (the emulator runs in its own process; the gateway's added time is the
      difference).
hold: BENCH_STREAMS (2000) concurrent streams held open by one gateway process, read by several
      client processes (see hold()): RSS per stream, delay between chunks beyond the emulator's
      interval as the client sees it, and streams that never started or ended early.
prep: preparing a 12 MP photo for the model: bytes sent vs original, and milliseconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import math
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import queue
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from PIL import Image

from bench._photos import photo
from bench._stack import ROOT, TOKEN, cpu_seconds, free_port, rss_bytes, scratch_database, service, store_env

HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-User-Id": "bench"}


@contextlib.contextmanager
def emulator_process(port: int, *args: str, module: str = "cli.ollama_emulator") -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # it can hang in shutdown after many streams; the figures are in
            process.kill()
            process.wait()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def direct_ttft(session: aiohttp.ClientSession, base: str) -> float:
    started = time.perf_counter()
    body = {"model": "llava", "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(f"{base}/api/chat", json=body) as response:
        async for line in response.content:
            if json.loads(line).get("message", {}).get("content"):
                elapsed = time.perf_counter() - started
                break
        async for _ in response.content:
            pass
    return elapsed


async def gateway_ttft(session: aiohttp.ClientSession, base: str, image_ids: tuple[str, ...] = ()) -> float:
    """Seconds from sending `POST /api/stream-message` to its first chunk event; reads to the end."""
    started = time.perf_counter()
    body = {"message": "hi", "model": "llava", **({"image_ids": list(image_ids)} if image_ids else {})}
    async with session.post(f"{base}/api/stream-message", json=body, headers=HEADERS) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b'data: {"type":"chunk"'):
                elapsed = time.perf_counter() - started
                break
        async for _ in response.content:
            pass
    return elapsed


async def measure(fn, base: str, concurrency: int, rounds: int) -> list[float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):  # warm up connections and the capability cache
            await fn(session, base)
        samples: list[float] = []
        for _ in range(rounds):
            samples += await asyncio.gather(*(fn(session, base) for _ in range(concurrency)))
        return samples


def gateway_env(url: str, tmp: str, ollama: str, **extra: str) -> dict[str, str]:
    # One bench user runs every stream: the per-user admission limits would measure the 429 path.
    limits = {"VISION_MAX_STREAMS_PER_USER": "0", "VISION_STREAM_RATE_PER_MINUTE": "0"}
    return {**store_env(url, Path(tmp)), "OLLAMA_URL": ollama, "VISION_KNOWN_MODELS": "llava", **limits, **extra}


def bench_ttft(admin_url: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, scratch_database(admin_url) as url:
        ollama_port, gateway_port = free_port(), free_port()
        ollama = f"http://127.0.0.1:{ollama_port}"
        with (
            emulator_process(ollama_port, "--reply-words", "5"),
            service("vision-gateway", gateway_port, gateway_env(url, tmp, ollama, DB_POOL_MAX_SIZE="20")),
        ):
            gateway = f"http://127.0.0.1:{gateway_port}"
            for concurrency, rounds in ((1, 200), (100, 5)):
                direct = asyncio.run(measure(direct_ttft, ollama, concurrency, rounds))
                through = asyncio.run(measure(gateway_ttft, gateway, concurrency, rounds))
                d50, d99 = percentile(direct, 50) * 1000, percentile(direct, 99) * 1000
                g50, g99 = percentile(through, 50) * 1000, percentile(through, 99) * 1000
                print(
                    f"TTFT at {concurrency} concurrent ({len(direct)} streams): direct p50 {d50:.2f} ms p99 {d99:.2f} ms;"
                    f" gateway p50 {g50:.2f} ms p99 {g99:.2f} ms; added p50 {g50 - d50:.2f} ms p99 {g99 - d99:.2f} ms"
                )


# Held slow streams: `hold` here, bench/floor_bench.py --hold (the floor beside the gateway), and the
# client loop of bench/held_streams_bench.py and bench/held_memory_bench.py.
HOLD_INTERVAL = 1.0  # seconds between a stream's chunks (the emulator's --chunk-delay)
# The longest wait for every stream's first chunk; streams not started by then are reported.
OPEN_SECONDS = float(os.environ.get("BENCH_OPEN_SECONDS", "300"))
# Streams opened per second, over all client processes (0: all at once). Thousands of connections
# at once overflow the listen backlog (aiohttp's 128, the gateway's, the floor's and the emulator's
# alike): at 8,000 a quarter of the streams were reset or had no answer in 120 s, in both servers.
OPEN_RATE = float(os.environ.get("BENCH_OPEN_RATE", "250"))
# Once all are open: time to settle, then the window whose chunk gaps and CPU are measured.
SETTLE_SECONDS, WINDOW_SECONDS = 5.0, float(os.environ.get("BENCH_HOLD_WINDOW", "20"))
SLACK_SECONDS = 60.0  # on top of each wait, for the client processes' start and a slow close


def opening_seconds(count: int) -> float:
    return count / OPEN_RATE if OPEN_RATE else 0.0


def longest_hold(count: int) -> float:
    """Seconds a hold of `count` streams can last: opening them, every bounded wait and the window."""
    return opening_seconds(count) + OPEN_SECONDS + SETTLE_SECONDS + WINDOW_SECONDS + 2 * SLACK_SECONDS


CHUNK, ERROR = b'data: {"type":"chunk"', b'data: {"type":"error"'


@dataclass
class Tally:
    """How a client's held streams went. Each stream ends once, counted in `ends` as "held" (open
    until the client closed it), "never started: <why>" (no first chunk: refused, failed, ended, or
    still waiting at the end) or "ended early: <why>" (had chunks, then ended before the client
    closed it); <why> is the HTTP status, the error event's code or the client's exception."""

    started: int = 0
    ends: collections.Counter[str] = field(default_factory=collections.Counter)
    # (time.monotonic() at a chunk, seconds since the stream's last chunk)
    gaps: list[tuple[float, float]] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(n for end, n in self.ends.items() if end.split(":")[0] == outcome)

    def add(self, other: Tally) -> None:
        self.started += other.started
        self.ends += other.ends
        self.gaps += other.gaps


async def held_stream(session: aiohttp.ClientSession, base: str, tally: Tally, settled: Callable[[], None]) -> None:
    """One held stream (the only client loop of the held-stream benchmarks): its chunk gaps and how it ended.

    `settled` is called once, at the first chunk or when the stream ends without one, so that a
    wait for the streams to open never waits for one that failed."""
    last: float | None = None
    why = "the response ended"
    try:
        body = {"message": "hi", "model": "llava"}
        async with session.post(f"{base}/api/stream-message", json=body, headers=HEADERS) as response:
            if response.status != 200:
                why = f"HTTP {response.status}"
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    why += f" {json.loads(await response.read())['error']['code']}"
                return
            async for line in response.content:
                if line.startswith(CHUNK):
                    now = time.monotonic()
                    if last is None:
                        tally.started += 1
                        settled()
                    else:
                        tally.gaps.append((now, now - last))
                    last = now
                elif line.startswith(ERROR):
                    why = f"error event {json.loads(line[len(b'data: ') :]).get('code')}"
    except asyncio.CancelledError:
        why = "closed"
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        why = type(exc).__name__ + (f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else "")
    finally:
        if last is None:
            settled()
            tally.ends[f"never started: {'still waiting at the end' if why == 'closed' else why}"] += 1
        else:
            tally.ends["held" if why == "closed" else f"ended early: {why}"] += 1


def held_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, sock_read=120)
    )


async def open_streams(
    session: aiohttp.ClientSession,
    base: str,
    count: int,
    tally: Tally,
    seconds: float = OPEN_SECONDS,
    per_second: float = 0.0,
) -> list[asyncio.Task[None]]:
    """Start `count` held streams, `per_second` of them a second (0: all at once); return their tasks
    once each has had its first chunk or ended, or `seconds` after the last was started
    (tally.started and tally.ends then tell how many had not)."""
    left, all_settled = count, asyncio.Event()

    def settled() -> None:
        nonlocal left
        left -= 1
        if not left:
            all_settled.set()

    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(held_stream(session, base, tally, settled)))
        if per_second:
            await asyncio.sleep(1 / per_second)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_settled.wait(), seconds if count else 0)
    return tasks


def client_process(
    base: str,
    count: int,
    procs: int,
    reports: multiprocessing.queues.Queue[Any],
    stop: multiprocessing.synchronize.Event,
) -> None:
    """One of hold()'s `procs` client processes: `count` streams, reported as ("open", started, ended since)
    once they have opened, held until `stop` is set (or a deadline), then reported as ("end", Tally)."""

    async def run() -> None:
        tally = Tally()
        async with held_session() as session:
            tasks = await open_streams(session, base, count, tally, per_second=OPEN_RATE / procs)
            reports.put(("open", tally.started, tally.count("ended early")))
            await asyncio.to_thread(stop.wait, longest_hold(count * procs))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        reports.put(("end", tally))

    uvloop.run(run())


def awaited_reports(
    reports: multiprocessing.queues.Queue[Any],
    clients: list[Any],
    inbox: list[tuple[Any, ...]],
    kind: str,
    seconds: float,
) -> list[tuple[Any, ...]]:
    """Each client process's `kind` report, within `seconds`; a clear error if one dies or is late."""
    deadline = time.monotonic() + seconds
    while (missing := len(clients) - sum(report[0] == kind for report in inbox)) > 0:
        dead = [c.exitcode for c in clients if c.exitcode not in (None, 0)]
        if dead or time.monotonic() > deadline:
            why = f"exit codes {dead}" if dead else f"nothing within {seconds:.0f} s"
            raise RuntimeError(f"{missing} of {len(clients)} client processes did not report {kind!r}: {why}")
        with contextlib.suppress(queue.Empty):
            inbox.append(reports.get(timeout=0.5))
    return [report[1:] for report in inbox if report[0] == kind]


@dataclass
class Held:
    """One server holding `count` streams, as hold() measured it."""

    count: int
    idle_rss: int
    open_rss: int  # sampled once every client process had reported its streams open
    open_at_sample: int  # streams started and not ended at that moment
    open_seconds: float  # from starting the clients to that moment
    window: tuple[float, float]  # time.monotonic() bounds of the measured window
    cpu: dict[str, float]  # share of one core over the window: server, emulator, each client process
    tally: Tally

    @property
    def kib_per_stream(self) -> float:
        return (self.open_rss - self.idle_rss) / max(self.open_at_sample, 1) / 1024

    @property
    def late(self) -> list[float]:
        """Each chunk's delay beyond the emulator's interval, for the chunks that arrived in the window."""
        low, high = self.window
        return [gap - HOLD_INTERVAL for at, gap in self.tally.gaps if low <= at <= high]

    def delay_ms(self, p: float) -> float:
        late = self.late
        return percentile(late, p) * 1000 if late else math.nan

    def line(self, label: str) -> str:
        t, clients = self.tally, [share for name, share in self.cpu.items() if name.startswith("client")]
        return (
            f"{label}: {self.count} streams, {len(clients)} client processes, all open after {self.open_seconds:.1f} s;"
            f" RSS {self.idle_rss / 2**20:.0f} -> {self.open_rss / 2**20:.0f} MiB with {self.open_at_sample} open ="
            f" {self.kib_per_stream:.1f} KiB per stream; over {WINDOW_SECONDS:.0f} s from {SETTLE_SECONDS:.0f} s"
            f" after: chunk delay beyond {HOLD_INTERVAL * 1000:.0f} ms p50 {self.delay_ms(50):.1f} ms, p99"
            f" {self.delay_ms(99):.1f} ms ({len(self.late)} chunks), CPU (of one core) server"
            f" {self.cpu['server']:.0%}, emulator {self.cpu['emulator']:.0%}, clients {sum(clients):.0%} (busiest"
            f" {max(clients):.0%}); held to the end {t.count('held')}"
            + "".join(f", {end} {n}" for end, n in sorted(t.ends.items()) if end != "held")
        )


def client_processes(count: int) -> int:
    """BENCH_CLIENT_PROCS, else one per 1,000 streams: one Python process reads ~1,000 chunks a second
    with time to spare, not 8,000 (all then arrive late and in bursts, and the figure is the client's)."""
    return max(1, min(count, int(os.environ.get("BENCH_CLIENT_PROCS", "0")) or math.ceil(count / 1000)))


def hold(base: str, count: int, server_pid: int, emulator_pid: int) -> Held:
    """`count` streams held against `base`, spread over client_processes(count) processes.

    The server's RSS is sampled idle and again once every client process has reported its streams
    open (each its first chunk, or ended). Chunk gaps and CPU are measured over a window that
    starts SETTLE_SECONDS later, while all are held; then the clients close their streams and
    report their gaps."""
    context = multiprocessing.get_context("spawn")
    reports: multiprocessing.queues.Queue[Any] = context.Queue()
    stop = context.Event()
    procs = client_processes(count)
    shares = [count // procs + (i < count % procs) for i in range(procs)]
    clients = [
        context.Process(target=client_process, args=(base, n, procs, reports, stop), daemon=True) for n in shares
    ]
    idle_rss, began = rss_bytes(server_pid), time.monotonic()
    inbox: list[tuple[Any, ...]] = []
    try:
        for client in clients:
            client.start()
        opened = awaited_reports(reports, clients, inbox, "open", opening_seconds(count) + OPEN_SECONDS + SLACK_SECONDS)
        open_rss, open_seconds = rss_bytes(server_pid), time.monotonic() - began
        time.sleep(SETTLE_SECONDS)
        pids = {"server": server_pid, "emulator": emulator_pid} | {f"client {c.pid}": c.pid or 0 for c in clients}
        cpu_before, low = {name: sum(cpu_seconds([pid])) for name, pid in pids.items()}, time.monotonic()
        time.sleep(WINDOW_SECONDS)
        high = time.monotonic()
        cpu = {name: (sum(cpu_seconds([pid])) - cpu_before[name]) / (high - low) for name, pid in pids.items()}
        stop.set()
        ends = awaited_reports(reports, clients, inbox, "end", SLACK_SECONDS)
    finally:
        stop.set()
        for client in (c for c in clients if c.pid is not None):  # started
            client.join(10)
            if client.is_alive():
                client.kill()
    tally = Tally()
    for (client_tally,) in ends:
        tally.add(client_tally)
    at_sample = sum(started - ended for started, ended in opened)
    return Held(count, idle_rss, open_rss, at_sample, open_seconds, (low, high), cpu, tally)


def hold_emulator(port: int, count: int) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """The emulator for a hold of `count` streams: no stream ends by itself before the client closes it."""
    args = ("--reply-words", str(int(longest_hold(count) / HOLD_INTERVAL)), "--chunk-delay", str(HOLD_INTERVAL))
    return emulator_process(port, *args, module="bench._held_emulator")


@contextlib.contextmanager
def held_gateway(admin_url: str, ollama: str) -> Iterator[tuple[str, int]]:
    """A gateway on a scratch database of its own, for held streams: its base URL and pid."""
    with tempfile.TemporaryDirectory() as tmp, scratch_database(admin_url) as url:
        port = free_port()
        env = gateway_env(url, tmp, ollama, DB_POOL_MAX_SIZE="20", SSE_HEARTBEAT_SECONDS="15")
        with service("vision-gateway", port, env) as gateway:
            yield f"http://127.0.0.1:{port}", gateway.pid


def bench_hold(admin_url: str, count: int = 2000) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    port = free_port()
    with hold_emulator(port, count) as emulator, held_gateway(admin_url, f"http://127.0.0.1:{port}") as (base, pid):
        print(hold(base, count, pid, emulator.pid).line("gateway"))


def bench_prep() -> None:
    from services.vision_gateway.image_prep import prepare_for_model

    with Image.open(io.BytesIO(photo("astronaut.png"))) as source:
        image = source.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    original = buffer.getvalue()
    times = []
    for _ in range(12):
        started = time.perf_counter()
        prepared = prepare_for_model(original, 1024)
        times.append(time.perf_counter() - started)
    naive = len(original) * 4 / 3
    print(
        f"prepare a 12 MP JPEG ({len(original) / 1e6:.2f} MB) for the model: {prepared.width}x{prepared.height}, "
        f"{prepared.encoded_bytes / 1e3:.0f} KB base64 sent vs {naive / 1e6:.2f} MB base64 of the original "
        f"({naive / prepared.encoded_bytes:.0f}x less); median {statistics.median(times[2:]) * 1000:.1f} ms"
    )


def main() -> None:
    admin_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("ttft", "all"):
        bench_ttft(admin_url)
    if which in ("hold", "all"):
        bench_hold(admin_url, int(os.environ.get("BENCH_STREAMS", "2000")))
    if which in ("prep", "all"):
        bench_prep()


if __name__ == "__main__":
    main()
