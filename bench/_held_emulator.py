"""cli/ollama_emulator.py for held streams: a pause between chunks is one timer (bench only).

    python -m bench._held_emulator [the emulator's arguments]

While a stream waits for its next chunk the emulator checks every 20 ms whether the client has
gone, as Ollama watches the request's context: 50 wake-ups a second per waiting stream. Holding
2,000 streams (a chunk a second, nothing else) that cost the emulator 87 % of a core on this
2-core machine, 11 % with one sleep per pause; at 8,000 it would want more than both cores, and the
floor's and the gateway's chunk delays would be the emulator's. The held-stream benchmarks'
clients leave only at the end, so here a client that has gone is noticed at the next line written.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from cli import ollama_emulator


class HeldEmulator(ollama_emulator.OllamaEmulator):
    async def _pause(self, request: web.Request, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)


if __name__ == "__main__":
    ollama_emulator.OllamaEmulator = HeldEmulator  # type: ignore[misc]  # what main() builds
    ollama_emulator.main()
