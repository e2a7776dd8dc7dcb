"""An Ollama server emulator that speaks Ollama's real wire protocol, for tests.

Facts it follows (see ../shared/reference/ollama-api.md): NDJSON streaming with one flushed line
per chunk and integer-nanosecond metrics only on the final line; `/api/show` with `capabilities`
(>= 0.6.4) or only the older vision signals; 404 texts of old and new versions; strict base64 for
images checked before the model lookup; errors mid-stream as an `{"error": ...}` line with no
done line; the pre-0.12.6 "HTTP 200 + error line" behaviour; generation stops when the client
disconnects, and the emulator records that it did.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from PIL import Image

_B64_CHARS = re.compile(rb"[A-Za-z0-9+/=\r\n]")
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
MISSING_VISION_DATA = (
    "Failed to create new sequence: failed to process inputs: this model is missing data required for image input"
)


def created_at() -> str:
    """Go's time.Time JSON form: RFC 3339 with nanoseconds, trailing zeros trimmed, UTC 'Z'."""
    now_ns = time.time_ns()
    stamp = datetime.fromtimestamp(now_ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{now_ns % 1_000_000_000:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


@dataclass
class EmulatedModel:
    name: str
    vision: bool = False
    # How the model reveals vision in /api/show: "modern" (capabilities list, >= 0.6.4), or one
    # of the older signals: "projector", "families_mllama", "vision_block_count"; "none" = no signal.
    style: str = "modern"
    family: str = "llama"
    reply: str = "The picture shows a small grey cat sitting on a sunny windowsill."
    thinking: bool = False
    embedding: bool = False
    modified_at: str = "2026-05-04T17:37:44.706015396-07:00"
    size: int = 4_733_363_377

    def matches(self, requested: str) -> bool:
        wanted = requested.lower()
        if ":" not in wanted:
            wanted += ":latest"
        own = self.name.lower()
        if ":" not in own:
            own += ":latest"
        return wanted == own

    def capabilities(self) -> list[str]:
        caps = ["embedding"] if self.embedding else ["completion"]
        if self.vision:
            caps.append("vision")
        if self.thinking:
            caps.append("thinking")
        return caps

    def details(self) -> dict[str, Any]:
        families = [self.family]
        if self.vision and self.style in ("projector", "modern"):
            families.append("clip")
        if self.vision and self.style == "families_mllama":
            families = ["mllama"]
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": families,
            "parameter_size": "7B",
            "quantization_level": "Q4_0",
        }


@dataclass
class SeenImage:
    format: str | None
    size: tuple[int, int] | None
    encoded_bytes: int
    decoded_bytes: int


@dataclass
class ChatRecord:
    body: dict[str, Any]
    headers: dict[str, str]
    images: list[SeenImage] = field(default_factory=list)
    chunks_sent: int = 0
    completed: bool = False
    cancelled: bool = False


DEFAULT_MODELS = (
    EmulatedModel("llava:latest", vision=True),
    EmulatedModel("llama3.2:latest", reply="Hello! How can I help you today?"),
    EmulatedModel("gemma3:latest", vision=True, style="vision_block_count", family="gemma3"),
    EmulatedModel("nomic-embed-text:latest", embedding=True, family="nomic-bert"),
)


class OllamaEmulator:
    """Configure attributes between requests; inspect `chats`, `show_calls`, `tags_calls`."""

    def __init__(
        self,
        models: list[EmulatedModel] | None = None,
        *,
        version_profile: str = "modern",
        version: str | None = None,
    ) -> None:
        self.models = list(models or DEFAULT_MODELS)
        self.version_profile = version_profile  # "modern" (>= 0.12.6) or "legacy" (<= 0.12.5)
        self.version = version or ("0.12.10" if version_profile == "modern" else "0.9.6")
        self.first_token_delay = 0.0
        self.chunk_delay = 0.0
        self.fail_before_first_token: str | None = None
        self.fail_after_chunks: int | None = None
        self.mid_stream_error = "an error was encountered while running the model: unexpected EOF"
        self.status_sequence: list[int] = []
        self.done_reason = "stop"
        self.non_vision_image_policy = "ignore"  # or "error"
        self.show_delay = 0.0
        self.chats: list[ChatRecord] = []
        self.show_calls = 0
        self.tags_calls = 0
        self._disconnected = asyncio.Event()

    # ---- test helpers ---------------------------------------------------------------------

    async def wait_for_disconnect(self, within: float = 5.0) -> ChatRecord:
        await asyncio.wait_for(self._disconnected.wait(), within)
        return next(record for record in reversed(self.chats) if record.cancelled)

    def find(self, name: str) -> EmulatedModel | None:
        return next((m for m in self.models if m.matches(name)), None)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._gin_errors])
        app.router.add_get("/", self._root, allow_head=True)
        app.router.add_get("/api/version", self._version, allow_head=True)
        app.router.add_get("/api/tags", self._tags, allow_head=True)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        return app

    # ---- plumbing -----------------------------------------------------------------------------

    @web.middleware
    async def _gin_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """gin's plain-text 404/405 bodies."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return web.Response(status=404, text="404 page not found")
        except web.HTTPMethodNotAllowed:
            return web.Response(status=405, text="405 method not allowed")

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status, content_type="application/json")

    def _not_found(self, name: str) -> web.Response:
        if self.version_profile == "legacy":
            return self._error(404, f'model "{name}" not found, try pulling it first')
        return self._error(404, f"model '{name}' not found")

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        self.tags_calls += 1
        models = [
            {
                "name": m.name,
                "model": m.name,
                "modified_at": m.modified_at,
                "size": m.size,
                "digest": f"{abs(hash(m.name)):064x}"[:64],
                "details": m.details(),
            }
            for m in sorted(self.models, key=lambda m: m.modified_at, reverse=True)
        ]
        return web.json_response({"models": models})

    async def _ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def _read_json(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        if not raw:
            return self._error(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return self._error(400, f"invalid character in JSON: {exc}")
        if not isinstance(body, dict):
            return self._error(400, "json: cannot unmarshal array into Go value of type api.ChatRequest")
        return body

    # ---- /api/show ----------------------------------------------------------------------------

    async def _show(self, request: web.Request) -> web.Response:
        self.show_calls += 1
        if self.show_delay:
            await asyncio.sleep(self.show_delay)
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model") or body.get("name") or ""
        if not name:
            return self._error(400, "model is required")
        model = self.find(name)
        if model is None:
            return self._error(404, f"model '{name}' not found")
        response: dict[str, Any] = {
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {model.name}\n',
            "parameters": 'stop "[INST]"',
            "template": "[INST] {{ .Prompt }} [/INST]",
            "details": model.details(),
            "model_info": {"general.architecture": model.family, "general.parameter_count": 7241732096},
            "modified_at": model.modified_at,
        }
        if model.vision and model.style == "vision_block_count":
            response["model_info"][f"{model.family}.vision.block_count"] = 27
        if model.vision and model.style in ("projector", "modern"):
            response["projector_info"] = {"general.architecture": "clip", "clip.has_vision_encoder": True}
        if model.style == "modern":
            response["capabilities"] = model.capabilities()
        return web.json_response(response)

    # ---- /api/chat ----------------------------------------------------------------------------

    @staticmethod
    def _check_base64(value: Any) -> str | None:
        """Go's encoding/json + StdEncoding: strict alphabet, padding required, CR/LF ignored."""
        if not isinstance(value, str):
            return "json: cannot unmarshal number into Go struct field Message.messages.images of type []uint8"
        raw = value.encode()
        for index, byte in enumerate(raw):
            if not _B64_CHARS.match(bytes([byte])):
                return f"illegal base64 data at input byte {index}"
        stripped = raw.replace(b"\r", b"").replace(b"\n", b"")
        try:
            base64.b64decode(stripped, validate=True)
        except binascii.Error:
            return f"illegal base64 data at input byte {len(stripped) - len(stripped) % 4}"
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        messages = body.get("messages") or []
        images: list[str] = []
        for message in messages:
            for image in (message or {}).get("images") or []:
                problem = self._check_base64(image)
                if problem:
                    return self._error(400, problem)
                images.append(image)
        record = ChatRecord(body=body, headers=dict(request.headers))
        record.images = [self._inspect(image) for image in images]
        self.chats.append(record)

        if self.status_sequence:
            return self._error(self.status_sequence.pop(0), BUSY_MESSAGE)
        name = body.get("model") or ""
        if not name:
            return self._error(400, "model is required")
        model = self.find(name)
        if model is None:
            return self._not_found(name)
        if body.get("think") and not model.thinking:
            return self._error(400, f'"{name}" does not support thinking')
        if model.embedding:
            return self._error(400, f'"{name}" does not support chat')
        if not messages:
            return web.json_response(
                {
                    "model": name,
                    "created_at": created_at(),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "load",
                }
            )

        reply = model.reply
        runner_error = self.fail_before_first_token
        if images and not model.vision:
            if self.non_vision_image_policy == "error":
                runner_error = MISSING_VISION_DATA
            else:
                reply = "I see the text [img-0] but I cannot look at images."
        if self.first_token_delay:
            try:
                await asyncio.sleep(self.first_token_delay)  # the model "loads"
            except asyncio.CancelledError:  # the client left while it loaded
                record.cancelled = True
                self._disconnected.set()
                raise
        if runner_error and self.version_profile == "modern":
            return self._error(500, runner_error)

        tokens = re.findall(r"\s*\S+", reply)
        prompt_tokens = sum(len(str((m or {}).get("content", "")).split()) for m in messages) + 768 * len(images)
        streaming = body.get("stream") is not False
        if not streaming:
            if runner_error:
                return self._error(500, runner_error)
            return web.json_response(
                self._final(name, "".join(tokens), prompt_tokens, len(tokens)),
                content_type="application/json",
            )
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        started = time.perf_counter_ns()
        try:
            if runner_error:  # legacy servers: HTTP 200 and a lone error line
                await self._line(response, {"error": runner_error + "\n"})
                return response
            for index, token in enumerate(tokens):
                if self.fail_after_chunks is not None and index == self.fail_after_chunks:
                    await self._line(response, {"error": self.mid_stream_error})
                    return response
                await self._line(
                    response,
                    {
                        "model": name,
                        "created_at": created_at(),
                        "message": {"role": "assistant", "content": token},
                        "done": False,
                    },
                )
                record.chunks_sent += 1
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            final = self._final(name, "", prompt_tokens, len(tokens), elapsed_ns=time.perf_counter_ns() - started)
            await self._line(response, final)
            record.completed = True
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            record.cancelled = True
            self._disconnected.set()
            raise
        return response

    def _final(
        self, name: str, content: str, prompt_tokens: int, eval_count: int, *, elapsed_ns: int = 1_000_000
    ) -> dict[str, Any]:
        load_ns = int(self.first_token_delay * 1e9) or 1_334_875
        final: dict[str, Any] = {
            "model": name,
            "created_at": created_at(),
            "message": {"role": "assistant", "content": content},
            "done": True,
            "done_reason": self.done_reason,
            "total_duration": load_ns + elapsed_ns + 342_546_000,
            "load_duration": load_ns,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 342_546_000,
            "eval_count": eval_count,
            "eval_duration": max(elapsed_ns, 1),
        }
        return final

    @staticmethod
    async def _line(response: web.StreamResponse, payload: dict[str, Any]) -> None:
        await response.write(json.dumps(payload, separators=(",", ":")).encode() + b"\n")

    @staticmethod
    def _inspect(encoded: str) -> SeenImage:
        data = base64.b64decode(encoded.replace("\r", "").replace("\n", ""))
        try:
            with Image.open(io.BytesIO(data)) as image:
                return SeenImage(image.format, image.size, len(encoded), len(data))
        except OSError:
            return SeenImage(None, None, len(encoded), len(data))

    # ---- /api/generate (enough for the official client) -----------------------------------------

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model") or ""
        model = self.find(name)
        if model is None:
            return self._error(404, f"model '{name}' not found")
        tokens = re.findall(r"\s*\S+", model.reply)
        if body.get("stream") is False:
            return web.json_response(
                {
                    "model": name,
                    "created_at": created_at(),
                    "response": "".join(tokens),
                    "done": True,
                    "done_reason": "stop",
                    "eval_count": len(tokens),
                }
            )
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for token in tokens:
            await self._line(response, {"model": name, "created_at": created_at(), "response": token, "done": False})
        await self._line(
            response,
            {
                "model": name,
                "created_at": created_at(),
                "response": "",
                "done": True,
                "done_reason": "stop",
                "eval_count": len(tokens),
            },
        )
        return response


def main() -> None:
    """Run the emulator as a process (benchmarks, manual `retina up` sessions without Ollama)."""
    import argparse

    parser = argparse.ArgumentParser(description="Ollama protocol emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--reply-words", type=int, default=0, help="replace replies with N words")
    args = parser.parse_args()
    emulator = OllamaEmulator()
    emulator.chunk_delay = args.chunk_delay
    emulator.first_token_delay = args.first_token_delay
    if args.reply_words:
        for model in emulator.models:
            model.reply = " ".join(f"word{i}" for i in range(args.reply_words))
    web.run_app(emulator.make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
