"""`/livez` (the process answers) and `/readyz` (dependencies usable, schema at head).

Readiness turns false as soon as shutdown begins, so Kubernetes stops routing new requests
while open streams finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

ReadinessCheck = Callable[[], Awaitable[None]]
"""Raises (any exception) when the dependency it checks is not usable."""

CHECK_TIMEOUT_SECONDS = 2.0


@dataclass
class Readiness:
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    shutting_down: bool = False

    def add(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    async def run(self) -> tuple[bool, dict[str, str]]:
        results: dict[str, str] = {}
        if self.shutting_down:
            results["shutdown"] = "in progress"

        async def one(name: str, check: ReadinessCheck) -> None:
            started = time.perf_counter()
            try:
                await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
            except TimeoutError:
                results[name] = f"timed out after {CHECK_TIMEOUT_SECONDS:g}s"
            except Exception as exc:  # noqa: BLE001 - any failure means not ready; reported, not raised
                results[name] = f"failed: {exc}"
            else:
                results[name] = f"ok ({(time.perf_counter() - started) * 1000:.1f} ms)"

        await asyncio.gather(*(one(name, check) for name, check in self.checks.items()))
        ready = not self.shutting_down and all(v.startswith("ok") for v in results.values())
        return ready, results


READINESS_KEY = web.AppKey("readiness", Readiness)


async def livez(request: web.Request) -> web.Response:
    del request
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, checks = await request.app[READINESS_KEY].run()
    return web.json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )


async def mark_shutting_down(app: web.Application) -> None:
    app[READINESS_KEY].shutting_down = True
