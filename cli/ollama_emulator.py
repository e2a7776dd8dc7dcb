"""An Ollama server emulator that speaks Ollama's real HTTP wire protocol.

Used by the tests, the benchmarks and `retina up --ollama-emulator` (a newcomer without a GPU can
try the whole stack; every answer is canned and says so).


Why it exists: the gateway must be tested against what Ollama *actually* sends, including the awkward
parts a hand-written fake tends to smooth over. The facts below come from Ollama's Go source
(github.com/ollama/ollama at v0.33.0-rc2, fb30760996871fa9460115c753afd2c60d4ab0f7: `server/routes.go`
ChatHandler and streamResponse, `api/types.go`, `server/images.go` Capabilities, `server/sched.go`,
`types/model/capability.go`, `llm/llama_server.go`, `docs/api.md`) and are reproduced on purpose:

* NDJSON streaming: `application/x-ndjson` (no charset), one JSON object per line, each line written
  (flushed) on its own, integer-nanosecond metrics only on the final `done: true` line, zero values omitted.
* The JSON is Go's: struct field order, `created_at` as RFC 3339 with trailing fractional zeros trimmed,
  `<`, `>` and `&` escaped as `\\u003c`-style sequences, non-ASCII left as UTF-8.
* Request decoding like Go's `encoding/json`: images must be padded standard base64 (`\\r`/`\\n` skipped);
  otherwise `illegal base64 data at input byte N`, reported *before* the model lookup.
* The check order of `ChatHandler`, the not-found texts of old and new versions, the pre-0.12.6
  "HTTP 200 + a lone error line" behaviour, mid-stream `{"error": ...}` lines with no done line after.
* `/api/show` with `capabilities` (>= 0.6.4) or only the older vision signals (clip projector, mllama
  family, `<arch>.vision.block_count`), or none at all.
* Generation stops when the client goes away; the emulator records that it did (`ChatRecord.cancelled`).

Everything is held by an `OllamaEmulator` instance; tests change its attributes between requests.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import io
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict
from PIL import Image

from cli.ollama_structured import structured_reply

__all__ = [
    "BUSY_MESSAGE",
    "CANNED_NOTICE",
    "GO_ENGINE_IMAGE_FORMATS",
    "MID_STREAM_ERROR",
    "MISSING_VISION_DATA",
    "UNKNOWN_IMAGE_FORMAT",
    "ChatRecord",
    "EmulatedModel",
    "GoBase64Error",
    "OllamaEmulator",
    "SeenImage",
    "created_at",
    "default_models",
    "go_base64_decode",
    "go_json",
    "pick_models",
    "showcase_models",
]

CapabilityStyle = Literal["modern", "projector", "families_mllama", "vision_block_count", "none"]
VersionProfile = Literal["modern", "legacy"]
ImagePolicy = Literal["ignore", "error"]

#: 503 text of a full scheduler queue (the two spaces are Ollama's).
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
#: Go-engine model without vision weights (v0.6.1+), as wrapped by the runner.
MISSING_VISION_DATA = (
    "Failed to create new sequence: failed to process inputs: this model is missing data required for image input"
)
#: The runner could not decode the image bytes (issue #11320: a GIF sent to the Go engine).
UNKNOWN_IMAGE_FORMAT = "Failed to create new sequence: failed to process inputs: image: unknown format"
#: The text `docs/api/errors.mdx` shows for an error after streaming started.
MID_STREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
#: What the Go engine's `model/model.go` registers decoders for (no GIF).
GO_ENGINE_IMAGE_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP"})
#: Tokens an image counts for during truncation (server/prompt.go).
IMAGE_TOKENS = 768

_SCHEDULER_ERRORS = {
    503: BUSY_MESSAGE,
    499: "request canceled",
    500: "llama runner process has terminated: exit status 2",
}
_THINK_LEVELS = ("high", "medium", "low", "max")
_DEFAULT_KEEP_ALIVE = 300.0
_LOADED_FOREVER = datetime(2318, 1, 1, tzinfo=UTC)  # what a negative keep_alive (MaxInt64 ns) looks like


# ---- Go-compatible encodings ----------------------------------------------------------------------


def go_json(value: Any) -> bytes:
    """Serialise like Go's `json.Marshal`, which Ollama and gin use for every body and stream line.

    Why: clients that only ever saw Python's `json.dumps` output can break on Go's HTML escaping or on raw
    UTF-8; the emulator should send the same bytes a real server would.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028")):
        text = text.replace(char, escaped)
    return text.replace("\u2029", "\\u2029").encode()


def go_time(moment: datetime) -> str:
    """Go's `time.Time` JSON form (RFC 3339, fractional zeros trimmed, `Z` for UTC)."""
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    if fraction:
        stamp += "." + fraction
    offset = moment.utcoffset()
    if not offset:
        return stamp + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{stamp}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def created_at() -> str:
    """`time.Now().UTC()` as Go prints it: RFC3339Nano (0-9 fractional digits, zeros trimmed) + `Z`."""
    now_ns = time.time_ns()
    stamp = datetime.fromtimestamp(now_ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{now_ns % 1_000_000_000:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


class GoBase64Error(ValueError):
    """Go's `base64.CorruptInputError`; the message is exactly the one Ollama returns with 400."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"illegal base64 data at input byte {offset}")
        self.offset = offset


_B64_VALUES = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_B64_VALID = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_NEWLINES = (0x0A, 0x0D)


def go_base64_decode(data: bytes) -> bytes:
    """Decode like `base64.StdEncoding.Decode` (what `encoding/json` does for `[]byte`).

    Why not `base64.b64decode`: Python is more lenient (and reports no offsets). Valid input takes a fast
    path; anything else runs a line-by-line port of Go's `decodeQuantum`, so the offset in the error is
    the one Ollama would report (`data:` prefix → 4, `https://` → 5).
    """
    stripped = data.replace(b"\r", b"").replace(b"\n", b"")
    if _B64_VALID.fullmatch(stripped):
        return binascii.a2b_base64(stripped)
    return _go_decode_quantums(data)


def _go_decode_quantums(src: bytes) -> bytes:
    """Port of Go 1.2x `encoding/base64` `Decode`/`decodeQuantum` for StdEncoding (padding required)."""
    out = bytearray()
    si, end = 0, len(src)
    while True:
        dbuf = [0, 0, 0, 0]
        dlen = 4
        j = 0
        while j < 4:
            if si == end:
                if j == 0:
                    return bytes(out)
                raise GoBase64Error(si - j)  # a short final quantum: StdEncoding wants padding
            char = src[si]
            si += 1
            value = _B64_VALUES.get(char)
            if value is not None:
                dbuf[j] = value
                j += 1
                continue
            if char in _NEWLINES:
                continue
            if char != 0x3D:  # not '='
                raise GoBase64Error(si - 1)
            if j in (0, 1):  # padding too early
                raise GoBase64Error(si - 1)
            if j == 2:  # "==" expected, the first one is consumed
                while si < end and src[si] in _NEWLINES:
                    si += 1
                if si == end:
                    raise GoBase64Error(end)
                if src[si] != 0x3D:
                    raise GoBase64Error(si - 1)
                si += 1
            while si < end and src[si] in _NEWLINES:
                si += 1
            if si < end:  # trailing garbage after padding
                raise GoBase64Error(si)
            dlen = j
            break
        quantum = dbuf[0] << 18 | dbuf[1] << 12 | dbuf[2] << 6 | dbuf[3]
        out.extend(quantum.to_bytes(3, "big")[: dlen - 1])
        if dlen < 4:
            return bytes(out)


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Seconds from a Go duration string ("5m", "1h30m", "-1s"), with `time.ParseDuration`'s errors."""
    quoted = json.dumps(text, ensure_ascii=False)
    rest = text
    negative = bool(rest) and rest[0] == "-"
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    while rest:
        number = re.match(r"\d+\.?\d*|\.\d+", rest)
        if number is None:
            raise ValueError(f"time: invalid duration {quoted}")
        rest = rest[number.end() :]
        unit_match = re.match(r"[^\d.]*", rest)
        unit = unit_match.group(0) if unit_match else ""
        rest = rest[len(unit) :]
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise ValueError(f"time: unknown unit {json.dumps(unit, ensure_ascii=False)} in duration {quoted}")
        total += float(number.group(0)) * _DURATION_UNITS[unit]
    return -total if negative else total


# ---- models -------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    """How Ollama resolves names: case-insensitive, default tag `latest`, default registry/namespace."""
    wanted = name.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/"):
        if wanted.startswith(prefix):
            wanted = wanted[len(prefix) :]
            break
    if wanted.startswith("library/"):
        wanted = wanted[len("library/") :]
    if ":" not in wanted.rsplit("/", 1)[-1]:
        wanted += ":latest"
    return wanted


@dataclass
class EmulatedModel:
    """One installed model and the vision signals `/api/show` exposes for it.

    `capability_style` picks what an Ollama of some age reports:
    "modern" (>= 0.6.4/0.6.8: a `capabilities` list; vision models also look llava-like),
    "projector" (no capabilities; `projector_info` and a "clip" family),
    "families_mllama" (no capabilities; family "mllama"),
    "vision_block_count" (no capabilities; `<arch>.vision.block_count` in `model_info`),
    "none" (no capabilities and no vision signal at all, even if the model has vision).
    """

    name: str
    vision: bool = False
    capability_style: CapabilityStyle = "modern"
    family: str = "llama"
    parameter_size: str = "7B"
    quantization_level: str = "Q4_0"
    format: str = "gguf"
    context_length: int = 4096
    reply: str = "The picture shows a small grey cat sitting on a sunny windowsill."
    thinking: bool = False
    thinking_reply: str = "The user wants a description, so I look at the picture first."
    embedding: bool = False
    tools: bool = False
    size: int = 4_733_363_377
    modified_at: datetime = datetime(2026, 5, 4, 17, 37, 44, 706015, tzinfo=timezone(timedelta(hours=-7)))

    @property
    def digest(self) -> str:
        """Bare hex, as `/api/tags` sends it (no `sha256:` prefix); stable per name."""
        return hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def full_name(self) -> str:
        """The form used in "does not support tools" errors."""
        canonical = _canonical(self.name)
        return f"registry.ollama.ai/{canonical if '/' in canonical else 'library/' + canonical}"

    def matches(self, requested: str) -> bool:
        """`llava`, `LLaVA` and `llava:latest` all name the same model."""
        return _canonical(requested) == _canonical(self.name)

    def capabilities(self) -> list[str]:
        """What a modern server computes (server/images.go `Capabilities`)."""
        caps = ["embedding"] if self.embedding else ["completion"]
        if self.vision:
            caps.append("vision")
        if self.tools:
            caps.append("tools")
        if self.thinking:
            caps.append("thinking")
        return caps

    @property
    def architecture(self) -> str:
        if self.vision and self.capability_style == "families_mllama":
            return "mllama"
        return self.family

    def details(self) -> dict[str, Any]:
        """`ModelDetails`, field order as in the Go struct."""
        families = [self.family]
        if self.vision and self.capability_style in ("modern", "projector"):
            families.append("clip")  # one entry per GGUF layer of a llava-style model (issue #2338)
        if self.vision and self.capability_style == "families_mllama":
            families = ["mllama"]
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.architecture,
            "families": families,
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def model_info(self) -> dict[str, Any]:
        arch = self.architecture
        info: dict[str, Any] = {
            "general.architecture": arch,
            "general.parameter_count": self.size * 2 // 3,
            f"{arch}.context_length": self.context_length,
            f"{arch}.embedding_length": 4096,
            "tokenizer.ggml.tokens": [],  # long arrays are blanked unless verbose
        }
        if self.embedding:
            info[f"{arch}.pooling_type"] = 1
        if self.vision and self.capability_style == "vision_block_count":
            info[f"{arch}.vision.block_count"] = 27
        return info

    def show(self) -> dict[str, Any]:
        """The `/api/show` body; `ShowResponse` field order, `model_info` always present (>= 0.14.3)."""
        body: dict[str, Any] = {
            "license": "",
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {self.name}\n',
            "parameters": 'stop "[INST]"',
            "template": "[INST] {{ .Prompt }} [/INST]",
            "details": self.details(),
            "model_info": self.model_info(),
        }
        del body["license"]  # omitempty
        if self.vision and self.capability_style in ("modern", "projector"):
            body["projector_info"] = {"general.architecture": "clip", "clip.has_vision_encoder": True}
        if self.capability_style == "modern":
            body["capabilities"] = self.capabilities()
        body["modified_at"] = go_time(self.modified_at)
        return body


def default_models() -> list[EmulatedModel]:
    """A fresh set of the models most tests need (fresh so one test's edits never leak into another)."""
    pdt = timezone(timedelta(hours=-7))
    return [
        EmulatedModel("llava:latest", vision=True, modified_at=datetime(2026, 5, 4, 17, 37, 44, 706015, tzinfo=pdt)),
        EmulatedModel(
            "llama3.2:latest",
            reply="Hello! How can I help you today?",
            tools=True,
            parameter_size="3.2B",
            quantization_level="Q4_K_M",
            size=2_019_393_189,
            modified_at=datetime(2026, 4, 30, 9, 12, 3, 125, tzinfo=pdt),
        ),
        EmulatedModel(
            "gemma3:latest",
            vision=True,
            capability_style="vision_block_count",
            family="gemma3",
            parameter_size="4.3B",
            quantization_level="Q4_K_M",
            size=3_338_801_804,
            modified_at=datetime(2026, 4, 2, 11, 0, 0, tzinfo=pdt),
        ),
        EmulatedModel(
            "nomic-embed-text:latest",
            embedding=True,
            family="nomic-bert",
            parameter_size="137M",
            quantization_level="F16",
            size=274_302_450,
            reply="",
            modified_at=datetime(2026, 3, 1, 8, 30, 0, tzinfo=pdt),
        ),
        # A thinking model (text only): with `think` unset a modern server lets it think.
        EmulatedModel(
            "qwen3:latest",
            thinking=True,
            tools=True,
            family="qwen3",
            parameter_size="8.2B",
            quantization_level="Q4_K_M",
            size=5_225_387_923,
            reply="Two plus two is four.",
            thinking_reply="The user asks for a sum. Two and two make four.",
            modified_at=datetime(2026, 2, 14, 10, 0, 0, tzinfo=pdt),
        ),
    ]


CANNED_NOTICE = "[canned answer from the Ollama emulator: no model ran]"


def showcase_models() -> list[EmulatedModel]:
    """What `retina up --ollama-emulator` and `python -m cli.ollama_emulator` offer a person trying retina.

    Every reply starts with CANNED_NOTICE, so nobody mistakes it for a model's answer. `qwen3-vl`
    both sees images and thinks, so every README example (`-m llava`, `-m qwen3-vl --think high`
    with images) works against it.
    """
    pdt = timezone(timedelta(hours=-7))
    models = [
        *(model for model in default_models() if not model.embedding),
        EmulatedModel(
            "qwen3-vl:latest",
            vision=True,
            thinking=True,
            tools=True,
            family="qwen3vl",
            parameter_size="8.8B",
            quantization_level="Q4_K_M",
            size=6_141_022_144,
            reply="The pictures show a small grey cat on a sunny windowsill.",
            thinking_reply="Two images are attached; I compare what each one shows before answering.",
            modified_at=datetime(2026, 5, 1, 12, 0, 0, tzinfo=pdt),
        ),
    ]
    for model in models:
        model.reply = f"{CANNED_NOTICE} {model.reply}"
    return models


# ---- recordings ------------------------------------------------------------------------------------


@dataclass
class SeenImage:
    """One image as it reached the model, so tests can assert what the gateway really sent."""

    format: str | None  # Pillow's name ("JPEG", "PNG", ...) or None when the bytes are not an image
    size: tuple[int, int] | None
    encoded_bytes: int  # length of the base64 text in the request
    decoded_bytes: int
    message_index: int | None = None  # index in `messages` (None for /api/generate's top-level images)
    mode: str | None = None
    sha256: str = ""


@dataclass
class ChatRecord:
    """One `/api/chat` (or `/api/generate`) request and what the emulator did with it."""

    body: dict[str, Any]
    headers: CIMultiDict[str]  # case-insensitive, as received
    path: str = "/api/chat"
    raw_body: bytes = b""
    images: list[SeenImage] = field(default_factory=list)
    status: int | None = None  # HTTP status sent (200 for streams, even when they carried an error line)
    error: str | None = None  # error text sent, as a body or as an NDJSON line
    streamed: bool = False
    chunks_sent: int = 0  # intermediate (done: false) lines written
    lines: list[dict[str, Any]] = field(default_factory=list)  # every NDJSON object written, in order
    completed: bool = False  # the done line was written
    cancelled: bool = False  # the client went away before the end; generation stopped
    dropped: bool = False  # the emulator cut the connection on purpose (`drop_after_chunks`)
    finished: bool = False  # the handler has returned

    @property
    def outcome(self) -> str:
        """A one-word summary for assertion messages."""
        if self.cancelled:
            return "cancelled"
        if self.dropped:
            return "dropped"
        if self.completed:
            return "completed"
        if self.error is not None:
            return "error"
        return "finished" if self.finished else "running"


class _BadRequest(Exception):
    """A 400 produced while decoding the body, as Go's decoder would word it."""


class _ClientGoneError(ConnectionResetError):
    """The socket closed while the emulator was 'thinking' (Ollama notices via the request context)."""


@dataclass
class _Decoded:
    """The parts of a chat/generate request the handler needs after decoding."""

    model: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    system: str = ""
    raw: bool = False
    images: list[tuple[int | None, bytes, int]] = field(default_factory=list)  # (message index, bytes, b64 len)
    stream: bool = True
    think: bool | str | None = None
    keep_alive: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tools: list[Any] = field(default_factory=list)
    top_logprobs: int = 0
    format: Any = None  # json.RawMessage: "json", a JSON Schema object, or anything (refused by the runner)


# ---- request decoding (Go encoding/json semantics) -------------------------------------------------


def _json_kind(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"


def _go_syntax_error(text: str, exc: json.JSONDecodeError) -> str:
    """Approximate Go's scanner messages for a body Python cannot parse."""
    if exc.pos >= len(text.rstrip()):
        return "unexpected EOF"
    char = text[exc.pos]
    shown = "'\\''" if char == "'" else f"'{char}'"
    context = {
        "Expecting ':' delimiter": "after object key",
        "Expecting ',' delimiter": "after object key:value pair",
        "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    }.get(exc.msg, "looking for beginning of value")
    return f"invalid character {shown} {context}"


class _Decoder:
    """Validates a parsed body the way Go decodes it into `api.ChatRequest` / `api.GenerateRequest`.

    Go keeps the *first* type/base64 error and carries on ("saved"), but errors from custom unmarshallers
    (`Message`, `ThinkValue`, `Duration`) abort at once; both rules are kept so the reported error matches.
    """

    def __init__(self, struct: str) -> None:
        self.struct = struct
        self.saved: str | None = None

    def save(self, message: str) -> None:
        if self.saved is None:
            self.saved = message

    def type_error(self, value: Any, path: str, go_type: str, struct: str | None = None) -> None:
        where = f"{struct or self.struct}.{path}"
        self.save(f"json: cannot unmarshal {_json_kind(value)} into Go struct field {where} of type {go_type}")

    def string(self, value: Any, path: str, struct: str | None = None) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            self.type_error(value, path, "string", struct)
            return ""
        return value

    def image(self, value: Any, path: str, struct: str | None = None) -> tuple[bytes, int] | None:
        """`ImageData` is a plain `[]byte`: a base64 string, or (Go quirk) an array of 0-255 numbers."""
        if value is None:
            return b"", 0
        if isinstance(value, str):
            try:
                return go_base64_decode(value.encode()), len(value)
            except GoBase64Error as exc:
                self.save(str(exc))
                return None
        if isinstance(value, list):
            out = bytearray()
            for item in value:
                if (
                    isinstance(item, bool)
                    or not isinstance(item, int | float)
                    or item != int(item)
                    or not 0 <= item <= 255
                ):
                    shown = (
                        f"number {item}"
                        if isinstance(item, int | float) and not isinstance(item, bool)
                        else _json_kind(item)
                    )
                    where = f"{struct or self.struct}.{path}"
                    self.save(f"json: cannot unmarshal {shown} into Go struct field {where} of type uint8")
                    return None
                out.append(int(item))
            return bytes(out), 0
        self.type_error(value, path, "api.ImageData", struct)
        return None

    def images(self, value: Any, path: str, index: int | None, into: _Decoded, struct: str | None = None) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            self.type_error(value, path, "[]api.ImageData", struct)
            return
        for item in value:
            decoded = self.image(item, path, struct)
            if decoded is not None:
                into.images.append((index, decoded[0], decoded[1]))

    def think(self, value: Any) -> bool | str | None:
        """`ThinkValue.UnmarshalJSON`: a bool or a level string; anything else aborts decoding."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            if value in _THINK_LEVELS:
                return value
            raise _BadRequest(
                f'invalid think value: {json.dumps(value)} (must be "high", "medium", "low", true, or false)'
            )
        raise _BadRequest('think must be a boolean or string ("high", "medium", "low", true, or false)')

    def keep_alive(self, value: Any) -> float | None:
        """`api.Duration.UnmarshalJSON`: number = seconds, string = Go duration, negative = forever."""
        if value is None:
            return None
        if isinstance(value, bool):
            raise _BadRequest("Unsupported type: 'bool'")
        if isinstance(value, int | float):
            return math.inf if value < 0 else float(value)
        if isinstance(value, str):
            try:
                seconds = parse_go_duration(value)
            except ValueError as exc:
                raise _BadRequest(str(exc)) from None
            return math.inf if seconds < 0 else seconds
        raise _BadRequest(
            f"Unsupported type: '{'[]interface {}' if isinstance(value, list) else 'map[string]interface {}'}'"
        )

    def common(self, key: str, value: Any, into: _Decoded) -> None:
        """Fields shared by ChatRequest and GenerateRequest."""
        if key == "model":
            into.model = self.string(value, "model")
        elif key == "stream":
            if value is not None and not isinstance(value, bool):
                self.type_error(value, "stream", "bool")
            elif value is not None:
                into.stream = value
        elif key == "think":
            into.think = self.think(value)
        elif key == "keep_alive":
            into.keep_alive = self.keep_alive(value)
        elif key == "format":
            into.format = value
        elif key == "options":
            if value is not None and not isinstance(value, dict):
                self.type_error(value, "options", "map[string]interface {}")
            elif value:
                into.options = value
        elif key == "top_logprobs":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                self.type_error(value, "top_logprobs", "int")
            elif value is not None:
                into.top_logprobs = value

    def message(self, index: int, value: Any, into: _Decoded) -> None:
        """`Message.UnmarshalJSON` decodes via an alias type and returns its first error at once."""
        if value is None:
            into.messages.append({})
            return
        if not isinstance(value, dict):
            raise _BadRequest(f"json: cannot unmarshal {_json_kind(value)} into Go value of type api.Alias")
        inner = _Decoder("Alias")
        for key, item in value.items():
            if key in ("role", "content", "thinking", "tool_name", "tool_call_id"):
                inner.string(item, key)
            elif key == "images":
                inner.images(item, "images", index, into)
            elif key == "tool_calls" and item is not None and not isinstance(item, list):
                inner.type_error(item, "tool_calls", "[]api.ToolCall")
        if inner.saved is not None:
            raise _BadRequest(inner.saved)
        into.messages.append(value)

    def chat(self, body: Any) -> _Decoded:
        if not isinstance(body, dict):
            raise _BadRequest(f"json: cannot unmarshal {_json_kind(body)} into Go value of type api.ChatRequest")
        decoded = _Decoded()
        for key, value in body.items():
            if key == "messages":
                if value is None:
                    continue
                if not isinstance(value, list):
                    self.type_error(value, "messages", "[]api.Message")
                    continue
                for index, message in enumerate(value):
                    self.message(index, message, decoded)
            elif key == "tools":
                if value is not None and not isinstance(value, list):
                    self.type_error(value, "tools", "api.Tools")
                elif value:
                    decoded.tools = value
            else:
                self.common(key, value, decoded)
        if self.saved is not None:
            raise _BadRequest(self.saved)
        return decoded

    def generate(self, body: Any) -> _Decoded:
        if not isinstance(body, dict):
            raise _BadRequest(f"json: cannot unmarshal {_json_kind(body)} into Go value of type api.GenerateRequest")
        decoded = _Decoded()
        for key, value in body.items():
            if key == "prompt":
                decoded.prompt = self.string(value, key)
            elif key == "system":
                decoded.system = self.string(value, key)
            elif key in ("suffix", "template"):
                self.string(value, key)
            elif key == "raw":
                if value is not None and not isinstance(value, bool):
                    self.type_error(value, "raw", "bool")
                else:
                    decoded.raw = bool(value)
            elif key == "images":
                self.images(value, "images", None, decoded)
            else:
                self.common(key, value, decoded)
        if self.saved is not None:
            raise _BadRequest(self.saved)
        return decoded


def _inspect(index: int | None, data: bytes, encoded_length: int) -> SeenImage:
    """What the runner would see: Pillow stands in for the runner's image decoders."""
    seen = SeenImage(None, None, encoded_length, len(data), index, None, hashlib.sha256(data).hexdigest())
    try:
        with Image.open(io.BytesIO(data)) as image:
            seen.format, seen.size, seen.mode = image.format, image.size, image.mode
    except (OSError, ValueError, SyntaxError):  # Pillow's "not an image" family
        pass
    return seen


def _tokens(text: str) -> list[str]:
    """Split a reply into token-like pieces (a word with its leading space) that join back to the text."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[len("".join(pieces)) :]
    if tail:
        pieces = [*pieces[:-1], pieces[-1] + tail] if pieces else [tail]
    return pieces


# ---- the emulator ------------------------------------------------------------------------------------


class OllamaEmulator:
    """A scriptable Ollama. Change attributes between requests; inspect `chats` and the counters.

    Behaviour knobs (all plain attributes):
      version_profile: "modern" (>= 0.12.6) or "legacy" (<= 0.12.5 / 0.11.x texts); `version` follows it
        unless set explicitly.
      first_token_delay: seconds of "model load" before anything is written (reported as load_duration).
      chunk_delay: seconds between stream lines.
      fail_before_first_token: runner error text (modern: 500 + application/json; legacy: 200 + one error line).
      fail_after_chunks / mid_stream_error: an `{"error": ...}` line after N chunks, then the stream ends.
      drop_after_chunks: cut the TCP connection after N chunks (no error line, no done line).
      status_sequence: statuses (or (status, message) pairs) the next chat/generate requests get from the
        "scheduler" before normal service resumes; 503 carries Ollama's busy text.
      done_reason: "stop" or "length" for the final line (`options.num_predict` also yields "length").
      non_vision_image_policy: "ignore" (200, the answer mentions "[img-0]") or "error" (runner error).
      accepted_image_formats: Pillow formats the runner decodes (others → "image: unknown format");
        None accepts anything.
      show_delay: seconds `/api/show` takes (it parses GGUF files in real life).
    """

    def __init__(
        self,
        models: Iterable[EmulatedModel] | None = None,
        *,
        version_profile: VersionProfile = "modern",
        version: str | None = None,
        first_token_delay: float = 0.0,
        chunk_delay: float = 0.0,
        fail_before_first_token: str | None = None,
        fail_after_chunks: int | None = None,
        mid_stream_error: str = MID_STREAM_ERROR,
        drop_after_chunks: int | None = None,
        status_sequence: Iterable[int | tuple[int, str]] = (),
        done_reason: str = "stop",
        non_vision_image_policy: ImagePolicy = "ignore",
        accepted_image_formats: Iterable[str] | None = GO_ENGINE_IMAGE_FORMATS,
        show_delay: float = 0.0,
        legacy_error_newline: bool = True,
    ) -> None:
        self.models: list[EmulatedModel] = list(models) if models is not None else default_models()
        self.version_profile: VersionProfile = version_profile
        self._version = version
        self.first_token_delay = first_token_delay
        self.chunk_delay = chunk_delay
        self.fail_before_first_token = fail_before_first_token
        self.fail_after_chunks = fail_after_chunks
        self.mid_stream_error = mid_stream_error
        self.drop_after_chunks = drop_after_chunks
        self.status_sequence: list[int | tuple[int, str]] = list(status_sequence)
        self.done_reason = done_reason
        self.non_vision_image_policy: ImagePolicy = non_vision_image_policy
        self.accepted_image_formats = None if accepted_image_formats is None else frozenset(accepted_image_formats)
        self.show_delay = show_delay
        # Old servers passed the runner's body through `http.Error`, which leaves a newline in the message.
        self.legacy_error_newline = legacy_error_newline

        self.chats: list[ChatRecord] = []
        self.generates: list[ChatRecord] = []
        self.disconnects: list[ChatRecord] = []
        self.shown: list[str] = []  # model names asked of /api/show, as sent
        self.show_calls = 0
        self.tags_calls = 0
        self.ps_calls = 0
        self.version_calls = 0
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request, including 404/405
        self.active_chats = 0
        self.max_active_chats = 0
        self.loaded: dict[str, datetime] = {}  # canonical name -> expires_at, for /api/ps
        self._disconnects_returned = 0
        self._changed: asyncio.Event | None = None

    # ---- configuration helpers ----------------------------------------------------------------

    @property
    def version(self) -> str:
        """What `/api/version` reports; follows `version_profile` unless set."""
        if self._version:
            return self._version
        return "0.12.10" if self.version_profile == "modern" else "0.9.6"

    @version.setter
    def version(self, value: str | None) -> None:
        self._version = value

    def find(self, name: str) -> EmulatedModel | None:
        """The installed model a request name resolves to, if any."""
        return next((m for m in self.models if m.matches(name)), None)

    def add_model(self, model: EmulatedModel) -> EmulatedModel:
        self.models.append(model)
        return model

    def preload(self, name: str, keep_alive: float | None = None) -> None:
        """Load an installed model as a request with empty messages would (it shows in /api/ps)."""
        model = self.find(name)
        if model is None:
            raise KeyError(f"the emulator has no model {name!r}")
        self._mark_loaded(model, keep_alive)

    # ---- waiting helpers (tests) -----------------------------------------------------------------

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:  # noqa: ASYNC109
        """Wait until `predicate()` holds; re-checked whenever a request changes state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                outcomes = [r.outcome for r in self.chats]
                raise TimeoutError(f"emulator: no {what} within {timeout}s (chat outcomes: {outcomes})")
            try:
                await asyncio.wait_for(self._event().wait(), min(remaining, 0.25))
            except TimeoutError:
                continue

    async def wait_for_disconnect(self, timeout: float = 5.0, *, within: float | None = None) -> ChatRecord:  # noqa: ASYNC109
        """The next recorded client disconnect (each call returns a different one, oldest first)."""
        wanted = self._disconnects_returned + 1
        await self.wait_until(lambda: len(self.disconnects) >= wanted, within or timeout, "client disconnect")
        self._disconnects_returned = wanted
        return self.disconnects[wanted - 1]

    async def wait_for_chats(self, count: int, timeout: float = 5.0) -> list[ChatRecord]:  # noqa: ASYNC109
        """Until at least `count` chat requests have arrived."""
        await self.wait_until(lambda: len(self.chats) >= count, timeout, f"{count} chat requests")
        return self.chats

    async def wait_for_idle(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Until every chat/generate handler has returned (generation really stopped)."""
        await self.wait_until(lambda: all(r.finished for r in (*self.chats, *self.generates)), timeout, "idle emulator")

    # ---- app ----------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """An aiohttp app with Ollama's routes; HEAD only where Ollama registers it."""
        app = web.Application(middlewares=[self._gin_errors])
        app.router.add_get("/", self._root, allow_head=True)
        app.router.add_get("/api/version", self._version_handler, allow_head=True)
        app.router.add_get("/api/tags", self._tags, allow_head=True)
        app.router.add_get("/api/ps", self._ps, allow_head=False)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        return app

    @web.middleware
    async def _gin_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """gin's plain-text 404/405 bodies (Ollama sets HandleMethodNotAllowed)."""
        self.calls.append((request.method, request.path))
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return web.Response(status=404, text="404 page not found")
        except web.HTTPMethodNotAllowed:
            return web.Response(status=405, text="405 method not allowed")

    @staticmethod
    def _json(payload: Any, status: int = 200, content_type: str = "application/json; charset=utf-8") -> web.Response:
        """gin's `c.JSON`: Go-encoded body, no trailing newline, charset unless a type was preset."""
        return web.Response(status=status, body=go_json(payload), headers={"Content-Type": content_type})

    def _fail(
        self,
        record: ChatRecord | None,
        status: int,
        message: str,
        content_type: str = "application/json; charset=utf-8",
    ) -> web.Response:
        if record is not None:
            record.status, record.error = status, message
        return self._json({"error": message}, status, content_type)

    def _not_found_message(self, name: str) -> str:
        if self.version_profile == "legacy":
            return f'model "{name}" not found, try pulling it first'
        return f"model '{name}' not found"

    # ---- small endpoints ------------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version_handler(self, request: web.Request) -> web.Response:
        self.version_calls += 1
        return self._json({"version": self.version})

    def _listing(self, model: EmulatedModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "model": model.name,
            "modified_at": go_time(model.modified_at),
            "size": model.size,
            "digest": model.digest,
            "details": model.details(),
        }

    async def _tags(self, request: web.Request) -> web.Response:
        self.tags_calls += 1
        newest_first = sorted(self.models, key=lambda m: m.modified_at, reverse=True)
        return self._json({"models": [self._listing(m) for m in newest_first]})

    async def _ps(self, request: web.Request) -> web.Response:
        self.ps_calls += 1
        now = datetime.now(UTC)
        running = []
        for model in self.models:
            expires = self.loaded.get(_canonical(model.name))
            if expires is None or expires <= now:
                continue
            entry = self._listing(model)
            del entry["modified_at"]
            entry["expires_at"] = go_time(expires.astimezone())
            entry["size_vram"] = model.size
            if self.version_profile == "modern":
                entry["context_length"] = max(model.context_length, 2048 if model.vision else 0)
            running.append((expires, entry))
        running.sort(key=lambda pair: pair[0], reverse=True)
        return self._json({"models": [entry for _, entry in running]})

    async def _show(self, request: web.Request) -> web.Response:
        self.show_calls += 1
        if self.show_delay:
            await asyncio.sleep(self.show_delay)
        raw = await request.read()
        if not raw.strip():
            return self._fail(None, 400, "missing request body")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            return self._fail(None, 400, _go_syntax_error(raw.decode("utf-8", "replace"), exc))
        if not isinstance(body, dict):
            return self._fail(
                None, 400, f"json: cannot unmarshal {_json_kind(body)} into Go value of type api.ShowRequest"
            )
        name = body.get("model") or body.get("name") or ""
        if not isinstance(name, str):
            return self._fail(
                None,
                400,
                f"json: cannot unmarshal {_json_kind(name)} into Go struct field ShowRequest.model of type string",
            )
        self.shown.append(name)
        if not name:
            return self._fail(None, 400, "model is required")
        model = self.find(name)
        if model is None:
            return self._fail(None, 404, f"model '{name}' not found")
        return self._json(model.show())

    # ---- chat / generate ----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, "chat")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, "generate")

    async def _completion(self, request: web.Request, kind: str) -> web.StreamResponse:
        """Bookkeeping around one request: recording, concurrency, and disconnect detection."""
        record = ChatRecord(body={}, headers=CIMultiDict(request.headers), path=request.path)
        (self.chats if kind == "chat" else self.generates).append(record)
        self.active_chats += 1
        self.max_active_chats = max(self.max_active_chats, self.active_chats)
        self._notify()
        try:
            return await self._serve(request, record, kind)
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            record.cancelled = True
            self.disconnects.append(record)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return web.Response(status=499)  # never reaches anyone: the socket is gone
        finally:
            self.active_chats -= 1
            record.finished = True
            self._notify()

    async def _pause(self, request: web.Request, seconds: float) -> None:
        """Sleep while watching the socket, as Ollama watches the request context during load/generation."""
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise _ClientGoneError("client closed the connection")
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.02))

    async def _serve(self, request: web.Request, record: ChatRecord, kind: str) -> web.StreamResponse:
        """ChatHandler/GenerateHandler, in Ollama's order of checks."""
        started = time.perf_counter_ns()
        raw = await request.read()
        record.raw_body = raw
        # 1. decoding: an empty body is io.EOF; Go's Decoder reads only the first JSON value.
        if not raw.strip():
            return self._fail(record, 400, "missing request body")
        text = raw.decode("utf-8", "replace")
        try:
            body, _ = json.JSONDecoder().raw_decode(text.lstrip())
        except json.JSONDecodeError as exc:
            return self._fail(record, 400, _go_syntax_error(text.lstrip(), exc))
        if isinstance(body, dict):
            record.body = body
        try:
            decoded = (
                _Decoder("ChatRequest").chat(body) if kind == "chat" else _Decoder("GenerateRequest").generate(body)
            )
        except _BadRequest as exc:
            return self._fail(record, 400, str(exc))
        record.images = [_inspect(index, data, length) for index, data, length in decoded.images]
        # 2. top_logprobs
        if not 0 <= decoded.top_logprobs <= 20:
            return self._fail(record, 400, "top_logprobs must be between 0 and 20")
        if decoded.format not in (None, "", "json") and not isinstance(decoded.format, dict):
            return self._fail(record, 400, 'invalid format: expected "json" or a valid JSON schema')
        # 3./4. model name and lookup (generate answers 404 even for an empty name)
        name = decoded.model
        if kind == "chat" and not name:
            return self._fail(record, 400, "model is required")
        model = self.find(name) if name else None
        if model is None:
            message = f"model '{name}' not found" if not name else self._not_found_message(name)
            return self._fail(record, 404, message)
        empty_input = not decoded.messages if kind == "chat" else not decoded.prompt
        # 5. nothing to say and keep_alive 0: unload
        if empty_input and decoded.keep_alive == 0:
            self.loaded.pop(_canonical(model.name), None)
            return self._special_done(record, kind, name, "unload")
        # 6. thinking requested from a model that cannot think
        if decoded.think and not model.thinking:
            return self._fail(record, 400, f"{json.dumps(name)} does not support thinking")
        # 7. capabilities, then the scheduler (queue full, load)
        if model.embedding:
            return self._fail(record, 400, f"{json.dumps(name)} does not support {kind}")
        if decoded.tools and not model.tools:
            return self._fail(record, 400, f"{model.full_name} does not support tools")
        if self.status_sequence:
            scripted = self.status_sequence.pop(0)
            status, message = scripted if isinstance(scripted, tuple) else (scripted, "")
            return self._fail(record, status, message or _SCHEDULER_ERRORS.get(status, BUSY_MESSAGE))
        await self._pause(request, self.first_token_delay)
        self._mark_loaded(model, decoded.keep_alive)
        # 8. empty input only loads the model
        if empty_input:
            return self._special_done(record, kind, name, "load")
        return await self._run(request, record, kind, model, name, decoded, started)

    def _mark_loaded(self, model: EmulatedModel, keep_alive: float | None) -> None:
        seconds = _DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive
        key = _canonical(model.name)
        if seconds == 0:
            self.loaded.pop(key, None)
        else:
            self.loaded[key] = (
                _LOADED_FOREVER if math.isinf(seconds) else datetime.now(UTC) + timedelta(seconds=seconds)
            )

    def _special_done(self, record: ChatRecord, kind: str, name: str, reason: str) -> web.Response:
        """The "load"/"unload" answers: one JSON object even when streaming was asked for."""
        payload: dict[str, Any] = {"model": name, "created_at": created_at()}
        if kind == "chat":
            payload["message"] = {"role": "assistant", "content": ""}
        else:
            payload["response"] = ""
        payload |= {"done": True, "done_reason": reason}
        record.status, record.completed = 200, True
        record.lines.append(payload)
        return self._json(payload)

    def _plan(
        self, model: EmulatedModel, decoded: _Decoded, seen: list[SeenImage]
    ) -> tuple[list[tuple[str, str]], str | None, str]:
        """What the runner will produce: (pieces, runner error before the first token, done_reason)."""
        runner_error = self.fail_before_first_token
        reply = model.reply
        if decoded.images and not model.vision:
            if self.non_vision_image_policy == "error":
                runner_error = runner_error or MISSING_VISION_DATA
            else:  # the llama.cpp runner leaves the [img-N] tags in the prompt as text
                tags = " ".join(f"[img-{n}]" for n in range(len(decoded.images)))
                reply = f"I can only see the text {tags} in your message, not an actual image."
        elif self.accepted_image_formats is not None and any(
            image.format not in self.accepted_image_formats for image in seen
        ):
            runner_error = runner_error or UNKNOWN_IMAGE_FORMAT
        if decoded.format:  # grammar-bound output: JSON, shaped by the schema if one was sent
            reply = structured_reply(decoded.format, reply)
        thinking_on = decoded.think if decoded.think is not None else self.version_profile == "modern"
        pieces: list[tuple[str, str]] = []
        if model.thinking and thinking_on:
            pieces += [("thinking", token) for token in _tokens(model.thinking_reply)]
        pieces += [("content", token) for token in _tokens(reply)]
        done_reason = self.done_reason
        limit = decoded.options.get("num_predict")
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(pieces):
            pieces, done_reason = pieces[:limit], "length"
        return pieces, runner_error, done_reason

    def _prompt_tokens(self, decoded: _Decoded) -> int:
        words = sum(len(str(m.get("content") or "").split()) for m in decoded.messages)
        text_words = len(decoded.prompt.split()) + len(decoded.system.split())
        return words + text_words + IMAGE_TOKENS * len(decoded.images)

    def _chunk(self, kind: str, name: str, pieces: Iterable[tuple[str, str]], done: bool) -> dict[str, Any]:
        """A ChatResponse/GenerateResponse line without metrics, field order as in the Go structs."""
        content = "".join(text for what, text in pieces if what == "content")
        thinking = "".join(text for what, text in pieces if what == "thinking")
        line: dict[str, Any] = {"model": name, "created_at": created_at()}
        if kind == "chat":
            message = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            line["message"] = message
        else:
            line["response"] = content
            if thinking:
                line["thinking"] = thinking
        line["done"] = done
        return line

    def _final(
        self,
        kind: str,
        name: str,
        pieces: list[tuple[str, str]],
        done_reason: str,
        prompt_tokens: int,
        started_ns: int,
        first_token_ns: int,
        with_context: bool = False,
        body_pieces: Iterable[tuple[str, str]] = (),
    ) -> dict[str, Any]:
        """The done line (or the whole `stream: false` answer): integer nanoseconds, zero values omitted."""
        now = time.perf_counter_ns()
        load_ns = int(self.first_token_delay * 1e9) or 1_334_875
        prompt_ns = 1_000_000 + prompt_tokens * 250_000
        line = self._chunk(kind, name, body_pieces, True)
        line["done_reason"] = done_reason
        if with_context:
            line["context"] = list(range(1, min(prompt_tokens, 8) + 1))
        metrics = {
            "total_duration": (now - started_ns) + prompt_ns,
            "load_duration": load_ns,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": prompt_ns,
            "eval_count": len(pieces),
            "eval_duration": max(now - first_token_ns, 1) if pieces else 0,
        }
        line |= {key: value for key, value in metrics.items() if value}
        return line

    async def _run(
        self,
        request: web.Request,
        record: ChatRecord,
        kind: str,
        model: EmulatedModel,
        name: str,
        decoded: _Decoded,
        started_ns: int,
    ) -> web.StreamResponse:
        """Generation: one JSON body (stream false) or flushed NDJSON lines."""
        pieces, runner_error, done_reason = self._plan(model, decoded, record.images)
        prompt_tokens = self._prompt_tokens(decoded)
        first_token_ns = time.perf_counter_ns()
        with_context = kind == "generate" and not decoded.raw  # the deprecated token context

        if not decoded.stream:
            if runner_error:
                return self._fail(record, 500, runner_error)
            for _ in pieces:
                await self._pause(request, self.chunk_delay)
            if self.fail_after_chunks is not None and self.fail_after_chunks <= len(pieces):
                return self._fail(record, 500, self.mid_stream_error)
            final = self._final(
                kind, name, pieces, done_reason, prompt_tokens, started_ns, first_token_ns, with_context, pieces
            )
            record.status, record.completed = 200, True
            record.lines.append(final)
            return self._json(final)

        if runner_error and self.version_profile == "modern":
            # v0.12.6+: nothing written yet, so streamResponse sets application/json and a real status.
            return self._fail(record, 500, runner_error, content_type="application/json")
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        record.status, record.streamed = 200, True
        if runner_error:  # <= v0.12.5: HTTP 200 already decided, the error is the only line
            message = runner_error + ("\n" if self.legacy_error_newline else "")
            await self._line(response, record, {"error": message})
            record.error = message
            await self._end(response)
            return response
        for index in range(len(pieces) + 1):
            if index:
                await self._pause(request, self.chunk_delay)
            if index == self.fail_after_chunks:
                await self._line(response, record, {"error": self.mid_stream_error})
                record.error = self.mid_stream_error
                await self._end(response)  # the handler returns: the body ends without a done line
                return response
            if index == self.drop_after_chunks and request.transport is not None:
                record.dropped = True
                request.transport.abort()
                return response
            if index == len(pieces):
                break
            await self._line(response, record, self._chunk(kind, name, [pieces[index]], False))
            record.chunks_sent += 1
            self._notify()
        final = self._final(kind, name, pieces, done_reason, prompt_tokens, started_ns, first_token_ns, with_context)
        await self._line(response, record, final)
        record.completed = True
        if decoded.keep_alive == 0:
            self.loaded.pop(_canonical(model.name), None)
        await self._end(response)
        return response

    @staticmethod
    async def _end(response: web.StreamResponse) -> None:
        """End the chunked body; a client that leaves after the last line has missed nothing."""
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()

    @staticmethod
    async def _line(response: web.StreamResponse, record: ChatRecord, payload: dict[str, Any]) -> None:
        """One NDJSON line, written (and so flushed) on its own."""
        await response.write(go_json(payload) + b"\n")
        record.lines.append(payload)


def pick_models(names: str) -> list[EmulatedModel]:
    """The showcase models named in `names` (comma-separated; all of them when empty); a name that is
    not among them becomes a plain text model answering the canned notice."""
    showcase = showcase_models()
    wanted = [part.strip() for part in names.split(",") if part.strip()]
    if not wanted:
        return showcase
    models = []
    for name in wanted:
        known = next((model for model in showcase if model.matches(name)), None)
        models.append(known or EmulatedModel(_canonical(name), reply=f"{CANNED_NOTICE} Hello from {name}."))
    return models


async def start_emulator(emulator: OllamaEmulator, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve `emulator` on host:port (0: a free port); returns the runner and the base URL it listens on."""
    runner = web.AppRunner(emulator.make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound}"


def main(argv: list[str] | None = None) -> None:
    """Run the emulator as a process (benchmarks, manual `retina up` sessions without Ollama).

    `python -m cli.ollama_emulator` works from any directory once retina is installed; it prints the
    address it listens on (useful with `--port 0`), then serves until Ctrl-C.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m cli.ollama_emulator", description="Ollama protocol emulator (canned answers)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--profile", choices=["modern", "legacy"], default="modern")
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--reply-words", type=int, default=0, help="replace replies with N words")
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated models this server has (default: the showcase set); a name the showcase set "
        "lacks becomes a text model, so several emulators can stand for a fleet with different models",
    )
    parser.add_argument(
        "--loaded", default="", help="comma-separated models already in memory at start (listed by /api/ps)"
    )
    args = parser.parse_args(argv)
    emulator = OllamaEmulator(
        pick_models(args.models),
        version_profile=args.profile,
        chunk_delay=args.chunk_delay,
        first_token_delay=args.first_token_delay,
    )
    for name in filter(None, (part.strip() for part in args.loaded.split(","))):
        emulator.preload(name)
    if args.reply_words:
        for model in emulator.models:
            model.reply = " ".join(f"word{i}" for i in range(args.reply_words))

    async def run() -> None:
        runner, url = await start_emulator(emulator, args.host, args.port)
        names = ", ".join(model.name.removesuffix(":latest") for model in emulator.models)
        print(f"Ollama emulator listening on {url} (canned answers; models: {names}). Ctrl-C to stop.", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
