"""Several Ollama backends (OLLAMA_URLS): emulators on their own ports, each with its own models.

Routing by model, by loaded model and by load, conversation affinity, failover when a backend's
process is killed (asks that had not started see nothing of it) and its return after the cooldown.
The routing tests run the emulators in this process (their records say which asks each one got);
the failure tests run them as processes, so a kill is a real one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cli.ollama_emulator import EmulatedModel, OllamaEmulator, pick_models, start_emulator
from common.app import REGISTRY_KEY
from services.vision_gateway.fleet.registry import ON_DEMAND_REFRESH_SECONDS
from tests.conftest import ROOT, auth_headers
from tests.ports import free_port, wait_listening
from tests.vision_gateway.conftest import Stack, ask, read_sse

Fleet = Callable[..., Awaitable[tuple[list[OllamaEmulator], list[str]]]]

# Fast clocks for the tests: refreshed often, cooled down briefly.
FAST = {"OLLAMA_REFRESH_SECONDS": "0.3", "OLLAMA_BACKEND_COOLDOWN_SECONDS": "0.5"}


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    """fleet([models, ...], loaded=[...]): one emulator per list, each on its own port."""
    runners = []

    async def start(*model_lists: str, loaded: tuple[str, ...] = (), chunk_delay: float = 0.0):
        emulators, urls = [], []
        for models in model_lists:
            emulator = OllamaEmulator(pick_models(models), chunk_delay=chunk_delay)
            for name in loaded:
                if emulator.find(name) is not None:
                    emulator.preload(name)
            runner, url = await start_emulator(emulator, "127.0.0.1", 0)
            runners.append(runner)
            emulators.append(emulator)
            urls.append(url)
        return emulators, urls

    yield start
    for runner in runners:
        await runner.cleanup()


def sample(gateway: TestClient, name: str, **labels: str) -> float:
    return gateway.app[REGISTRY_KEY].get_sample_value(name, labels) or 0.0


def label(url: str) -> str:
    return url.removeprefix("http://")


async def done(gateway: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    """Ask, read the whole stream, insist it completed; the start event (its conversation_id)."""
    result = await read_sse(await ask(gateway, body))
    assert result.status == 200, result.events
    assert result.events[-1]["type"] == "done", result.events
    return result.events[0]


async def test_each_model_goes_to_a_backend_that_has_it(stack: Stack, fleet: Fleet) -> None:
    (a, b, c), urls = await fleet("llava,llama3.2", "qwen3,llama3.2", "gemma3")
    gateway = await stack.make_gateway(OLLAMA_URLS=",".join(urls), OLLAMA_REFRESH_SECONDS="60")
    for model, emulator in (("llava", a), ("qwen3", b), ("gemma3", c)):
        await done(gateway, {"message": f"hi {model}", "model": model})
        assert [chat.body["model"] for chat in emulator.chats][-1] == model
    assert len(a.chats) == len(b.chats) == len(c.chats) == 1

    listed = (await (await gateway.get("/api/models", headers=auth_headers())).json())["models"]
    names = sorted(m["name"] for m in listed)
    assert names == ["gemma3:latest", "llama3.2:latest", "llava:latest", "qwen3:latest"], "the union, each once"
    v1 = await (await gateway.get("/v1/models", headers=auth_headers())).json()
    assert sorted(m["id"] for m in v1["data"]) == names

    # A model pulled onto a backend after the last refresh is found by the refresh its first ask starts.
    c.add_model(EmulatedModel("mistral:latest", reply="Bonjour."))
    await done(gateway, {"message": "salut", "model": "mistral"})
    assert c.chats[-1].body["model"] == "mistral"

    response = await ask(gateway, {"message": "hi", "model": "no-such-model"})
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "unknown_model"


async def test_the_backend_with_the_model_loaded_is_preferred(stack: Stack, fleet: Fleet) -> None:
    (a, b, c), urls = await fleet("llava", "llava", "llava", loaded=())
    b.preload("llava")
    gateway = await stack.make_gateway(OLLAMA_URLS=",".join(urls), OLLAMA_REFRESH_SECONDS="60")
    for i in range(5):
        await done(gateway, {"message": f"new conversation {i}", "model": "llava"})
    assert (len(a.chats), len(b.chats), len(c.chats)) == (0, 5, 0)
    decisions = "vision_gateway_routing_decisions_total"
    assert sample(gateway, decisions, backend=label(urls[1]), decision="loaded_preferred") == 5
    assert sum(e.show_calls for e in (a, b, c)) == 1


async def test_sixty_streams_spread_within_one_and_a_half_times(stack: Stack, fleet: Fleet) -> None:
    emulators, urls = await fleet("llava", "llava", "llava", loaded=("llava",), chunk_delay=0.01)
    gateway = await stack.make_gateway(OLLAMA_URLS=",".join(urls), OLLAMA_REFRESH_SECONDS="60")
    await asyncio.gather(*(done(gateway, {"message": f"ask {i}", "model": "llava"}) for i in range(60)))
    counts = [len(e.chats) for e in emulators]
    assert sum(counts) == 60
    assert max(counts) <= 1.5 * min(counts), counts
    # The model's capabilities were asked of one backend once: all three report the same digest.
    assert sum(e.show_calls for e in emulators) == 1
    for url in urls:
        assert sample(gateway, "vision_gateway_backend_streams_in_flight", backend=label(url)) == 0.0
        assert sample(gateway, "vision_gateway_backend_requests_total", backend=label(url), outcome="opened") >= 12


async def test_a_conversation_stays_on_its_backend_for_ten_turns(stack: Stack, fleet: Fleet) -> None:
    emulators, urls = await fleet("llava", "llava", "llava", loaded=("llava",))
    gateway = await stack.make_gateway(OLLAMA_URLS=",".join(urls), OLLAMA_REFRESH_SECONDS="60")
    conversation = (await done(gateway, {"message": "turn 0", "model": "llava"}))["conversation_id"]
    for turn in range(1, 10):
        await done(gateway, {"message": f"turn {turn}", "model": "llava", "conversation_id": conversation})
        await done(gateway, {"message": f"someone else {turn}", "model": "llava"})  # spreads by rotation

    def turns(emulator: OllamaEmulator) -> int:
        return sum(chat.body["messages"][-1]["content"].startswith("turn ") for chat in emulator.chats)

    assert sorted(turns(e) for e in emulators) == [0, 0, 10], [turns(e) for e in emulators]
    [home] = [url for url, e in zip(urls, emulators, strict=True) if turns(e)]
    assert sample(gateway, "vision_gateway_routing_decisions_total", backend=label(home), decision="affinity_kept") == 9
    others = [e for e in emulators if not turns(e)]
    assert all(e.chats for e in others), "the other conversations were spread over every backend"


async def test_a_stream_on_the_second_backend_is_stopped_from_another_replica(stack: Stack, fleet: Fleet) -> None:
    """Stop and cross-replica stop do not care which backend serves: the stream's backend stops
    generating, and its count of streams in flight is back to 0."""
    (a, b), urls = await fleet("llava", "llava,qwen3", chunk_delay=0.1)
    env = {"OLLAMA_URLS": ",".join(urls), "OLLAMA_REFRESH_SECONDS": "60"}
    gateway, other_replica = await stack.make_gateway(**env), await stack.make_gateway(**env)
    response = await ask(gateway, {"message": "hi", "model": "qwen3"})
    start = json.loads((await response.content.readline())[len(b"data: ") :])
    assert await response.content.readline() == b"\n"
    await b.wait_for_chats(1)
    assert sample(gateway, "vision_gateway_backend_streams_in_flight", backend=label(urls[1])) == 1.0
    stop = await other_replica.post(f"/api/stream-message/{start['stream_id']}/stop", headers=auth_headers())
    assert await stop.json() == {"stream_id": start["stream_id"], "stopped": True}
    assert (await read_sse(response)).events[-1]["done_reason"] == "stopped"
    await b.wait_for_disconnect(within=5)
    assert a.chats == []
    assert sample(gateway, "vision_gateway_backend_streams_in_flight", backend=label(urls[1])) == 0.0


@pytest.fixture
async def silent_backend() -> AsyncIterator[str]:
    """The URL of a server that accepts connections and reads what it is sent, but never answers."""

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_a_backend_that_never_answers_costs_only_itself(stack: Stack, fleet: Fleet, silent_backend: str) -> None:
    """Its listing is bounded by OLLAMA_LIST_TIMEOUT_SECONDS and waited for by nobody else: asks for
    the other backend's models are answered at once, right after start and through an on-demand
    refresh while its listing is still under way; then it is down."""
    (good,), urls = await fleet("llava")
    silent = label(silent_backend)
    gateway = await stack.make_gateway(
        OLLAMA_URLS=f"{silent_backend},{urls[0]}", OLLAMA_REFRESH_SECONDS="60", OLLAMA_LIST_TIMEOUT_SECONDS="3"
    )
    async with asyncio.timeout(1.5):
        await done(gateway, {"message": "right after start", "model": "llava"})
    # Had that ask started an on-demand refresh, the next may start only a second later.
    await asyncio.sleep(ON_DEMAND_REFRESH_SECONDS)
    good.add_model(EmulatedModel("mistral:latest", reply="Bonjour."))
    async with asyncio.timeout(1.5):
        await done(gateway, {"message": "salut", "model": "mistral"})
    assert good.tags_calls == 2, "mistral was found by an on-demand refresh"
    assert sample(gateway, "vision_gateway_backend_up", backend=silent) == 1.0, "the silent one's listing is under way"

    deadline = time.monotonic() + 3
    while sample(gateway, "vision_gateway_backend_up", backend=silent) != 0.0:
        assert time.monotonic() < deadline, "a listing that timed out did not mark the backend down"
        await asyncio.sleep(0.05)
    assert sample(gateway, "vision_gateway_backend_up", backend=label(urls[0])) == 1.0


async def test_a_backend_that_never_answers_does_not_hold_up_the_others_refreshes(
    stack: Stack, fleet: Fleet, silent_backend: str
) -> None:
    (good,), urls = await fleet("llava")
    await stack.make_gateway(OLLAMA_URLS=f"{silent_backend},{urls[0]}", OLLAMA_LIST_TIMEOUT_SECONDS="5", **FAST)
    deadline = time.monotonic() + 2
    while good.tags_calls < 4:
        assert time.monotonic() < deadline, f"the good backend was listed {good.tags_calls} times in 2 s"
        await asyncio.sleep(0.05)


# ---- failures: emulator processes ------------------------------------------------------------------


def start_process(port: int, models: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.ollama_emulator", "--port", str(port), "--models", models, "--loaded", "llava"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_listening(process, port, name="an emulator process")
    except RuntimeError:
        process.kill()
        process.wait(timeout=10)
        raise
    return process


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def test_a_killed_backend_is_failed_over_then_rejoins_after_its_cooldown(
    stack: Stack, processes: list[subprocess.Popen[bytes]]
) -> None:
    ports = [free_port(), free_port()]
    processes.append(start_process(ports[0], "llava,gemma3"))
    processes.append(start_process(ports[1], "llava"))
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    gone, kept = label(urls[0]), label(urls[1])
    # Refreshed rarely: the gateway learns of the kill from the asks themselves.
    gateway = await stack.make_gateway(
        OLLAMA_URLS=",".join(urls), OLLAMA_REFRESH_SECONDS="60", OLLAMA_BACKEND_COOLDOWN_SECONDS="1"
    )
    await done(gateway, {"message": "warm up", "model": "gemma3"})  # both backends listed, first one serves
    assert sample(gateway, "vision_gateway_backend_requests_total", backend=gone, outcome="opened") == 1

    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait(timeout=10)
    for i in range(6):  # the rotation sends the first of these to the dead backend
        await done(gateway, {"message": f"while one is gone {i}", "model": "llava"})
    assert sample(gateway, "vision_gateway_backend_requests_total", backend=gone, outcome="connect_failed") == 1
    assert sample(gateway, "vision_gateway_routing_decisions_total", backend=kept, decision="failover") == 1
    assert sample(gateway, "vision_gateway_backend_requests_total", backend=kept, outcome="opened") == 6
    assert sample(gateway, "vision_gateway_backend_up", backend=gone) == 0.0

    # Only the dead backend had gemma3: 503 until its cooldown ends, and when to come back.
    response = await ask(gateway, {"message": "hi", "model": "gemma3"})
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "upstream_unavailable"
    assert 1 <= int(response.headers["Retry-After"]) <= 1

    processes.append(start_process(ports[0], "llava,gemma3"))
    deadline = time.monotonic() + 5
    while sample(gateway, "vision_gateway_backend_up", backend=gone) != 1.0:
        assert time.monotonic() < deadline, "the backend was not probed back after its cooldown"
        await asyncio.sleep(0.05)
    for i in range(4):
        await done(gateway, {"message": f"both back {i}", "model": "llava"})
    assert sample(gateway, "vision_gateway_backend_requests_total", backend=gone, outcome="opened") >= 2
    await done(gateway, {"message": "hi again", "model": "gemma3"})
