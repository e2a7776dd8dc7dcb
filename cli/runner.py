"""Running aiohttp apps as processes: one service (what a container runs) or several (`retina up`)."""

from __future__ import annotations

import asyncio
import errno
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from aiohttp import web

from cli.ports import PortInUse
from common.collector import collect_old_objects_rarely, freeze_startup_objects
from common.memory import return_large_buffers
from common.settings import SettingsError

log = structlog.get_logger("retina.runner")

S = TypeVar("S")


def load_or_exit(loader: Callable[[Mapping[str, str]], S], environ: Mapping[str, str]) -> S:
    """Load settings, or print one line per problem and exit non-zero (secrets never echoed)."""
    try:
        return loader(environ)
    except SettingsError as exc:
        import sys

        print("retina: configuration is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def run_on_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """`asyncio.run(main)` on the event loop EVENT_LOOP names.

    uvloop took 9 % off the image-store's CPU per image GET in issue 19's profile; `asyncio`
    keeps the standard library's loop available (EVENT_LOOP=asyncio) for telling a uvloop
    problem from ours.
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


# Connections the kernel completes and queues for a service before it accepts them (aiohttp's default
# is 128; Linux caps the value at net.core.somaxconn, 4096 by default since 5.4). While the loop is
# busy — thousands of streams opening, a long collection — new connections wait in this queue; once
# it is full the kernel drops or resets them. Measured (bench/RESULTS.md, issue 19): a gateway
# holding 8,000 streams opened at 250 a second lost 58-98 of them to connection resets with 128.
LISTEN_BACKLOG = 2048


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    app: web.Application
    host: str
    port: int
    port_flag: str = "--port"  # the option that picks another port, for the "already in use" line


async def serve(
    specs: Sequence[ServiceSpec],
    *,
    shutdown_timeout: float,
    on_started: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve every app until SIGINT/SIGTERM, then shut all of them down gracefully."""
    return_large_buffers()  # RSS then follows what the memory budgets count (common/memory.py)
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for spec in specs:
            runner = web.AppRunner(
                spec.app,
                handler_cancellation=True,
                access_log=None,
                shutdown_timeout=shutdown_timeout,
            )
            await runner.setup()
            runners.append(runner)
            try:
                await web.TCPSite(runner, spec.host, spec.port, backlog=LISTEN_BACKLOG).start()
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(spec.host, spec.port, spec.name, spec.port_flag) from None
                raise
            log.info("service_started", service=spec.name.replace("-", "_"), host=spec.host, port=spec.port)
        # Full collections then walk only what requests made, and come rarely (common/collector.py).
        freeze_startup_objects()
        collect_old_objects_rarely()
        if on_started is not None:
            await on_started()
        await stop.wait()
        log.info("shutdown_requested")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for runner in reversed(runners):
            await runner.cleanup()
