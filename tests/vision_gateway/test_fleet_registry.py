"""The fleet's registry and facade on their own: in-process emulators, a clock the test moves.

What test_fleet.py cannot pin down through a whole gateway: how often the backends are asked for
their listings, and what a 503 says about when to come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from cli.ollama_emulator import OllamaEmulator, pick_models, start_emulator
from common.db import open_pool
from common.errors import UnknownModel, UpstreamUnavailable
from services.vision_gateway.chat.request import ChatRequest
from services.vision_gateway.chat.turn import Caller, PreparedChat, open_turn
from services.vision_gateway.fleet.backend import Backend
from services.vision_gateway.fleet.fleet import OllamaFleet
from services.vision_gateway.fleet.registry import BackendRegistry
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.ollama_client import ChatStream, OllamaClient
from services.vision_gateway.repository import ConversationRepository


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Made = tuple[list[OllamaEmulator], OllamaFleet]
MakeFleet = Callable[..., Awaitable[Made]]


@pytest.fixture
async def make_fleet() -> AsyncIterator[MakeFleet]:
    """make_fleet("llava", "qwen3", clock=..., cooldown=...): one emulator per list, one fleet over them."""
    runners = []
    async with aiohttp.ClientSession() as session:

        async def make(*model_lists: str, clock: Clock, cooldown: float = 5.0) -> Made:
            metrics = GatewayMetrics(CollectorRegistry())
            emulators, backends = [], []
            for index, models in enumerate(model_lists):
                emulator = OllamaEmulator(pick_models(models))
                runner, url = await start_emulator(emulator, "127.0.0.1", 0)
                runners.append(runner)
                emulators.append(emulator)
                client = OllamaClient(
                    session, url, retries=0, metrics=metrics, connect_timeout=2, read_timeout=5, list_timeout=2
                )
                backends.append(Backend(client, url, index))
            registry = BackendRegistry(
                backends, metrics.fleet, refresh_seconds=60, cooldown_seconds=cooldown, clock=clock
            )
            await registry.refresh()  # what the background loop does first
            return emulators, OllamaFleet(registry, metrics, retries=0)

        yield make
        for runner in runners:
            await runner.cleanup()


async def test_a_flood_of_asks_for_unknown_models_lists_each_backend_once_a_second(make_fleet: MakeFleet) -> None:
    clock = Clock()
    emulators, fleet = await make_fleet("llava", "qwen3", clock=clock)
    assert [e.tags_calls for e in emulators] == [1, 1]

    for n in range(50):
        with pytest.raises(UnknownModel):
            await fleet.holders(f"no-such-model-{n}")
    assert [e.tags_calls for e in emulators] == [2, 2], "one on-demand refresh, not one per ask"

    clock.now += 0.5
    with pytest.raises(UnknownModel):
        await fleet.holders("still-none")
    assert [e.tags_calls for e in emulators] == [2, 2]

    clock.now += 0.5  # a second after the last on-demand refresh: the next one may start
    emulators[1].add_model(pick_models("gemma3")[0])
    assert [b.label for b in await fleet.holders("gemma3")] == [fleet.registry.backends[1].label]
    assert [e.tags_calls for e in emulators] == [3, 3]


async def test_retry_after_is_when_a_backend_with_the_model_comes_back(make_fleet: MakeFleet) -> None:
    """Not when some other backend's cooldown ends: coming back then would find the model still down."""
    clock = Clock()
    _, fleet = await make_fleet("gemma3", "llava", clock=clock, cooldown=5.0)
    gemma_server, llava_server = fleet.registry.backends
    fleet.registry.mark_down(gemma_server, "could not connect")  # back at 1005
    clock.now += 3
    fleet.registry.mark_down(llava_server, "could not connect")  # back at 1008
    with pytest.raises(UpstreamUnavailable) as failure:
        await fleet.holders("llava")
    assert failure.value.retry_after == 5
    with pytest.raises(UpstreamUnavailable) as failure:
        await fleet.holders("gemma3")
    assert failure.value.retry_after == 2


async def test_a_caller_gone_as_the_first_line_arrives_leaves_no_stream_open(
    make_fleet: MakeFleet, database_url: str, db: Any
) -> None:
    """The ask's task is cancelled (its client left) in the very turn of the loop in which Ollama's
    first line arrives: the opened stream is closed (Ollama stops generating), the backend's count
    of streams in flight goes back to 0, and the recorded turn is removed again."""
    (emulator,), fleet = await make_fleet("llava", clock=Clock())
    emulator.chunk_delay = 0.05
    for model in emulator.models:
        model.reply = " ".join(f"word{i}" for i in range(400))  # 20 s of answer
    [backend] = fleet.registry.backends

    class LeavingFleet(OllamaFleet):
        asker: asyncio.Task[Any] | None = None

        async def open_chat(self, payload: dict[str, Any], **kwargs: Any) -> ChatStream:
            stream = await super().open_chat(payload, **kwargs)
            assert self.asker is not None
            self.asker.cancel()  # the client leaves now, before the asker has seen the stream
            return stream

    leaving = LeavingFleet(fleet.registry, GatewayMetrics(CollectorRegistry()), retries=0)
    prepared = PreparedChat(
        request=ChatRequest(message="hi", model="llava"),
        caller=Caller("alice"),
        model="llava",
        vision=True,
        ollama_messages=[{"role": "user", "content": "hi"}],
        notices=(),
    )
    async with open_pool(database_url, min_size=1, max_size=2) as pool:
        repository = ConversationRepository(pool)
        asker = asyncio.ensure_future(open_turn(prepared, ollama=leaving, repository=repository, grace_seconds=5))
        leaving.asker = asker
        with pytest.raises(asyncio.CancelledError):
            await asker
        await emulator.wait_for_disconnect(within=5)
    assert backend.in_flight == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_a_backend_listing_garbage_keeps_its_state_and_the_refresh_goes_on(make_fleet: MakeFleet) -> None:
    """`{"models": 5}` from /api/tags is a listing that failed, not an exception out of the refresh
    (which would end the background loop, and with it every probe of a backend marked down)."""
    clock = Clock()
    (emulator,), fleet = await make_fleet("llava", clock=clock)
    [backend] = fleet.registry.backends

    async def garbage(_request: web.Request) -> web.Response:
        return web.json_response({"models": 5})

    bad = web.Application()
    bad.router.add_get("/api/tags", garbage)
    runner = web.AppRunner(bad)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        backend.client._base = url  # the same backend, now answering garbage
        await fleet.registry.refresh()
        assert backend.up
        assert backend.has("llava:latest"), "its last listing is kept"
        assert backend.failure == "it did not list its models"
    finally:
        await runner.cleanup()
    assert emulator.tags_calls == 1


async def test_a_refresh_that_began_before_a_connect_failure_does_not_mark_the_backend_up(
    make_fleet: MakeFleet,
) -> None:
    """An ask fails to connect while a refresh's listing is on its way: the listing is from before the
    failure, so the backend stays down for its cooldown (else each refresh would cost an ask a failover)."""
    clock = Clock()
    (emulator,), fleet = await make_fleet("llava", clock=clock)
    [backend] = fleet.registry.backends
    asked, answer = asyncio.Event(), asyncio.Event()

    async def slow_tags(_request: web.Request) -> web.Response:
        asked.set()
        await answer.wait()
        return web.json_response({"models": [{"name": "llava:latest", "digest": "d1"}]})

    async def nothing_loaded(_request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    slow = web.Application()
    slow.router.add_get("/api/tags", slow_tags)
    slow.router.add_get("/api/ps", nothing_loaded)
    runner = web.AppRunner(slow)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    emulator_url = backend.client._base
    try:
        backend.client._base = f"http://127.0.0.1:{runner.addresses[0][1]}"  # the same backend, slow to list
        refresh = asyncio.ensure_future(fleet.registry.refresh())
        await asyncio.wait_for(asked.wait(), 5)
        clock.now += 0.1
        fleet.registry.mark_down(backend, "could not connect")  # an ask's connect failed meanwhile
        answer.set()
        await refresh
    finally:
        await runner.cleanup()
    assert not backend.up, "the refresh's older answer marked the backend up again"
    assert backend.down_until == clock.now + 5.0
    assert backend.failure == "could not connect"
    assert backend.has("llava:latest")

    clock.now += 5.0  # the cooldown is over: a refresh that starts now (its probe) marks it up
    backend.client._base = emulator_url
    await fleet.registry.refresh()
    assert backend.up
    assert emulator.tags_calls == 2


async def test_one_late_listing_keeps_a_backend_that_answered_before_two_in_a_row_mark_it_down(
    make_fleet: MakeFleet,
) -> None:
    """A listing late once (a busy gateway or GPU server) does not refuse every ask for a cooldown;
    a backend that stays silent is down at its second late listing."""
    clock = Clock()
    (emulator,), fleet = await make_fleet("llava", clock=clock)
    [backend] = fleet.registry.backends
    never = asyncio.Event()

    async def silent(_request: web.Request) -> web.Response:
        await never.wait()  # until the test ends: the runner's clean-up waits for its handlers
        return web.json_response({"models": []})

    app = web.Application()
    app.router.add_get("/api/tags", silent)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    emulator_url = backend.client._base
    backend.client._list_timeout = aiohttp.ClientTimeout(total=0.3)
    try:
        backend.client._base = f"http://127.0.0.1:{runner.addresses[0][1]}"  # the same backend, now silent
        await fleet.registry.refresh()
        assert backend.up, "one late listing marked a backend that had answered down"
        assert backend.failure, "its failure is noted"
        assert backend.has("llava:latest"), "its listing is kept"
        await fleet.registry.refresh()
        assert not backend.up, "a second late listing in a row leaves it down"
    finally:
        never.set()
        await runner.cleanup()
    clock.now += 5.0  # the cooldown is over: its probe answers, the count of late listings starts again
    backend.client._base = emulator_url
    await fleet.registry.refresh()
    assert backend.up
    assert backend.listing_timeouts == 0
    assert emulator.tags_calls == 2
