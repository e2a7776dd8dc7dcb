"""`retina up` asks Ollama, once at start, whether it answers and what it has, for the banner.

The same questions the gateway asks (/api/tags, then /api/show per model, read by the gateway's own
vision detection), with a short deadline: a missing Ollama shows in the banner, not at the first question.
With several backends (OLLAMA_URLS) each is asked, at the same time, and has its line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.vision_gateway.capabilities import detect_vision

PROBE_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class OllamaReport:
    answered: bool
    models: int = 0
    vision: int = 0
    thinking: int = 0
    problem: str = ""  # why it did not answer, for people


async def probe_ollama(base_url: str, *, seconds: float = PROBE_SECONDS) -> OllamaReport:
    base = base_url.rstrip("/")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds)) as session:
            async with session.get(f"{base}/api/tags") as response:
                if response.status != 200:
                    return OllamaReport(False, problem=f"GET /api/tags answered HTTP {response.status}")
                body = await response.json(content_type=None)
            names = [str(model.get("name") or model.get("model")) for model in _models(body)]
            shows = await asyncio.gather(*(_show(session, base, name) for name in names))
    except TimeoutError:
        return OllamaReport(False, problem=f"no answer within {seconds:g}s")
    except aiohttp.ClientConnectorError as exc:
        return OllamaReport(False, problem=_connect_problem(exc))
    except (aiohttp.ClientError, ValueError) as exc:
        return OllamaReport(False, problem=f"it did not answer like Ollama ({type(exc).__name__})")
    capabilities = [detect_vision(show)[1] for show in shows if show is not None]
    return OllamaReport(
        True,
        models=len(names),
        vision=sum("vision" in caps for caps in capabilities),
        thinking=sum("thinking" in caps for caps in capabilities),
    )


async def probe_all(base_urls: Sequence[str], *, seconds: float = PROBE_SECONDS) -> list[OllamaReport]:
    """`probe_ollama` of every backend at once: the banner waits for the slowest, not for their sum."""
    return list(await asyncio.gather(*(probe_ollama(url, seconds=seconds) for url in base_urls)))


def _models(body: Any) -> list[dict[str, Any]]:
    models = body.get("models") if isinstance(body, dict) else None
    return [model for model in models or [] if isinstance(model, dict)]


async def _show(session: aiohttp.ClientSession, base: str, name: str) -> dict[str, Any] | None:
    async with session.post(f"{base}/api/show", json={"model": name}) as response:
        if response.status != 200:
            return None
        body = await response.json(content_type=None)
        return body if isinstance(body, dict) else None


def _connect_problem(exc: aiohttp.ClientConnectorError) -> str:
    cause = exc.os_error
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    return f"could not connect ({cause.strerror or type(cause).__name__})"


def describe(url: str, report: OllamaReport, *, emulated: bool) -> list[str]:
    """The banner's Ollama lines: the first goes after `ollama`, the rest are indented under it."""
    if emulated:
        return [
            f"{url}  EMULATOR: answers are canned, no model runs",
            f"({report.models} models, {report.vision} see images, {report.thinking} think; "
            "qwen3-vl does both; for real answers: --ollama-url URL)",
        ]
    if not report.answered:
        return [
            f"{url}  did NOT answer ({report.problem})",
            "start Ollama (`ollama serve`), point at another with --ollama-url URL (or OLLAMA_URL),",
            "or try the stack with canned answers: retina up --ollama-emulator",
        ]
    if report.models == 0:
        return [f"{url}  answered, but has no models: `ollama pull llava` (sees images)"]
    line = f"{url}  answered: {report.models} models, {report.vision} can see images"
    if report.vision == 0:
        return [line, "none can see images: `ollama pull llava` for questions about pictures"]
    return [line]


def describe_all(urls: Sequence[str], reports: Sequence[OllamaReport], *, emulated: bool) -> list[str]:
    """The banner's Ollama lines for every backend: one alone as `describe` says it; several one line
    each (worded as for one), then what to do, once, when none answered or none can see images."""
    if len(urls) == 1:
        return describe(urls[0], reports[0], emulated=emulated)
    lines = [describe(url, report, emulated=False)[0] for url, report in zip(urls, reports, strict=True)]
    answered = [report for report in reports if report.answered]
    if not answered:
        lines += [
            "none answered: start Ollama there (`ollama serve`), list others in OLLAMA_URLS,",
            "or try the stack with canned answers: retina up --ollama-emulator",
        ]
    elif any(report.models for report in answered) and not any(report.vision for report in answered):
        lines.append("none can see images: `ollama pull llava` for questions about pictures")
    return lines
