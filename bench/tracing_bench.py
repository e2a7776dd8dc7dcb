"""What tracing costs: server CPU per stream with tracing off, on (every trace) and on at 10 %.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python -m bench.tracing_bench [text|image] [ROUNDS] [STREAMS]

text:  streamed asks without images (50-word replies): the gateway process's CPU per stream.
image: multipart asks with one photo (the gateway forwards it to the image-store, which decodes
       and stores it; the gateway prepares it for the model): CPU of both processes per ask.

Each mode starts the services afresh (tracing is decided from OTEL_* at start), warms up, then
runs STREAMS asks 8 at a time and reads utime + stime of the service processes from /proc (as
serving_cpu_bench does: on a shared machine throughput measures the neighbours). Modes alternate
within each round so drift on the machine touches all of them alike. "on" exports every span
over OTLP/HTTP protobuf to a real receiver in this process (tests/otlp_receiver.py decodes every
request), so the exporter's batching and serialising are part of the figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from aiohttp import web
from PIL import Image

from bench._photos import photo
from bench._stack import ROOT, cpu_seconds, free_port, scratch_database, service
from bench.gateway_bench import HEADERS, emulator_process, gateway_env
from tests.otlp_receiver import OTEL_VARIABLES, OtlpReceiver

CONCURRENCY = 8
WARM_UP = 20
# A checkout of the code before tracing (e.g. `git archive <commit> | tar -x -C DIR`): the "before"
# mode runs the services from there, with the same settings, to compare "off" with it.
BASELINE = os.environ.get("TRACING_BENCH_BASELINE", "")


def modes(endpoint: str) -> dict[str, dict[str, str]]:
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "500"}
    return {
        **({"before": {}} if BASELINE else {}),
        "off": {},
        "on": on,
        "on 10%": {**on, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    }


@contextlib.contextmanager
def receiver_thread() -> Iterator[tuple[str, OtlpReceiver]]:
    """The OTLP receiver on its own loop and thread, so the bench's client loop is not its host."""
    receiver = OtlpReceiver()
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(receiver.make_app())
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", receiver
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def sample_jpeg() -> bytes:
    with Image.open(io.BytesIO(photo("chelsea.png"))) as source:
        image = source.convert("RGB").resize((1200, 900))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


async def ask(session: aiohttp.ClientSession, base: str, image: bytes | None) -> None:
    if image is None:
        body: dict[str, str] | aiohttp.FormData = {"message": "hi", "model": "llava"}
        request = session.post(f"{base}/api/stream-message", json=body, headers=HEADERS)
    else:
        form = aiohttp.FormData()
        form.add_field("message", "what is this?")
        form.add_field("model", "llava")
        form.add_field("images", io.BytesIO(image), filename="photo.jpg", content_type="image/jpeg")
        request = session.post(f"{base}/api/stream-message", data=form, headers=HEADERS)
    async with request as response:
        assert response.status == 200, await response.text()
        body_text = await response.read()
        assert b'"type":"done"' in body_text, body_text[-300:]


async def run_asks(base: str, count: int, image: bytes | None) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                await ask(session, base, image)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def measure_mode(admin_url: str, workload: str, otel: dict[str, str], streams: int, root: Path = ROOT) -> float:
    """Milliseconds of server CPU per ask, for one start of the services with `otel` set."""
    image = sample_jpeg() if workload == "image" else None
    with tempfile.TemporaryDirectory() as tmp, scratch_database(admin_url) as url:
        ollama_port, store_port, gateway_port = free_port(), free_port(), free_port()
        ollama = f"http://127.0.0.1:{ollama_port}"
        env = gateway_env(
            url,
            tmp,
            ollama,
            DB_POOL_MAX_SIZE="20",
            IMAGE_STORE_URL=f"http://127.0.0.1:{store_port}",
            **otel,
        )
        with contextlib.ExitStack() as stack:
            stack.enter_context(emulator_process(ollama_port, "--reply-words", "50"))
            pids = []
            if workload == "image":
                pids.append(stack.enter_context(service("image-store", store_port, env, root=root)).pid)
            pids.append(stack.enter_context(service("vision-gateway", gateway_port, env, root=root)).pid)
            base = f"http://127.0.0.1:{gateway_port}"
            asyncio.run(run_asks(base, WARM_UP, image))
            before = sum(cpu_seconds(pids))
            asyncio.run(run_asks(base, streams, image))
            after = sum(cpu_seconds(pids))
    return (after - before) * 1000 / streams


def main() -> None:
    admin_url = os.environ["BENCH_DATABASE_URL"]
    workload = sys.argv[1] if len(sys.argv) > 1 else "text"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    streams = int(sys.argv[3]) if len(sys.argv) > 3 else (400 if workload == "text" else 100)
    for name in OTEL_VARIABLES:
        os.environ.pop(name, None)
    results: dict[str, list[float]] = {}
    with receiver_thread() as (endpoint, receiver):
        for round_number in range(1, rounds + 1):
            for mode, otel in modes(endpoint).items():
                exported = len(receiver.spans)
                root = Path(BASELINE) if mode == "before" else ROOT
                per_ask = measure_mode(admin_url, workload, otel, streams, root)
                results.setdefault(mode, []).append(per_ask)
                print(
                    f"round {round_number} {mode:7} {per_ask:6.2f} ms CPU per ask"
                    f" ({len(receiver.spans) - exported} spans exported)",
                    flush=True,
                )
    off = statistics.median(results["before" if BASELINE else "off"])
    print(f"\n{workload}: server CPU ms per ask, median of {rounds} rounds of {streams} asks ({CONCURRENCY} at a time)")
    for mode, values in results.items():
        median = statistics.median(values)
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(
            f"  {mode:7} {median:6.2f} ms (rounds {spread}), {100 * (median - off) / off:+.1f} % vs {'before' if BASELINE else 'off'}"
        )


if __name__ == "__main__":
    main()
