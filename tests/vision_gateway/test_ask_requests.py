"""`retina ask` against a scripted gateway: the request it builds (JSON or streamed multipart, think,
format), how it renders thinking, errors and broken streams, and its configuration and arguments."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from cli.ask.command import run_ask
from cli.ask.config import AskConfig, MissingToken, load_config
from cli.ask.exits import ExitCode
from cli.ask.progress import UploadProgress
from cli.ask.render import DIM, RESET, Renderer
from cli.ask.request import CHUNK_BYTES, THINK_LEVELS, AskRequest
from cli.ask.session import AskSession
from cli.env_file import read_env_file, write_env_file
from cli.local_stack import local_secrets, remember_gateway_url
from cli.main import _parser
from tests.conftest import SERVICE_TOKEN
from tests.vision_gateway.ask_process import AskProcess, ask_env
from tests.vision_gateway.fake_gateway import CONVERSATION_ID, STREAM_ID, FakeGateway, done_event, sse, start_event

SCHEMA = {"type": "object", "properties": {"animal": {"type": "string"}}, "required": ["animal"]}
THINKING = [{"type": "thinking", "content": "Let me "}, {"type": "thinking", "content": "look."}]


class Terminal(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


async def ask(
    fake: FakeGateway, aiohttp_server: Any, request: AskRequest, *, terminal: bool = False
) -> tuple[ExitCode, str, str]:
    server = await aiohttp_server(fake.app())
    config = AskConfig(str(server.make_url("")), SERVICE_TOKEN, "carol")
    out, err = (Terminal(), Terminal()) if terminal else (io.StringIO(), io.StringIO())
    progress = UploadProgress(request.upload_bytes(), err, enabled=terminal)
    code = await AskSession(config, request, Renderer(out, err, terminal=terminal), progress).run()
    return code, out.getvalue(), err.getvalue()


def answer(*events: dict[str, Any]) -> FakeGateway:
    return FakeGateway(writes=sse(start_event(), *events, done_event()))


async def test_without_images_the_body_is_json_with_think_and_a_schema(aiohttp_server: Any) -> None:
    fake = answer({"type": "chunk", "content": '{"animal": "cat"}'})
    request = AskRequest("What animal?", "llava", conversation_id=CONVERSATION_ID, think="high", format=SCHEMA)
    code, out, err = await ask(fake, aiohttp_server, request)
    assert code == ExitCode.OK, err
    assert out == '{"animal": "cat"}\n'
    (sent,) = fake.requests
    assert sent.content_type == "application/json"
    assert sent.json == {
        "message": "What animal?",
        "model": "llava",
        "conversation_id": CONVERSATION_ID,
        "think": "high",
        "format": SCHEMA,
    }
    assert sent.headers["Authorization"] == f"Bearer {SERVICE_TOKEN}"
    assert sent.headers["X-User-Id"] == "carol"
    assert err == f"conversation {CONVERSATION_ID}\n"


async def test_with_images_the_files_stream_as_multipart_parts(aiohttp_server: Any, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(CHUNK_BYTES * 5 + 123))  # several chunks; the fake does not decode it
    small = tmp_path / "small.jpg"
    small.write_bytes(b"\xff\xd8 not really a jpeg")
    request = AskRequest("Compare", "llava", images=[big, small], think=True, format="json")
    fake = answer({"type": "chunk", "content": "Two files."})
    code, out, err = await ask(fake, aiohttp_server, request, terminal=True)
    assert code == ExitCode.OK, err
    (sent,) = fake.requests
    assert sent.content_type == "multipart/form-data"
    assert [(p.name, p.data) for p in sent.parts[:4]] == [
        ("message", b"Compare"),
        ("model", b"llava"),
        ("think", b"true"),
        ("format", b"json"),
    ]
    files = [(p.name, p.filename, p.content_type, hashlib.sha256(p.data).hexdigest()) for p in sent.parts[4:]]
    assert files == [
        ("images", "big.png", "image/png", hashlib.sha256(big.read_bytes()).hexdigest()),
        ("images", "small.jpg", "image/jpeg", hashlib.sha256(small.read_bytes()).hexdigest()),
    ]
    total = big.stat().st_size + small.stat().st_size
    bar_lines = err.split("\r\x1b[K")
    assert "uploading big.png [" in bar_lines[1]
    assert bar_lines[-1].startswith("uploading small.jpg [####")
    assert f"100% {total / 1024 / 1024:.1f} MB/{total / 1024 / 1024:.1f} MB\n" in err, err
    assert out == "Two files.\n"


async def test_a_schema_file_and_a_think_level_go_in_a_multipart_body_as_text(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    image = tmp_path / "a.webp"
    image.write_bytes(b"RIFF....WEBP")
    fake = answer({"type": "chunk", "content": "ok"})
    request = AskRequest("Q", "llava", images=[image], think=False, format=SCHEMA)
    code, _, err = await ask(fake, aiohttp_server, request)
    assert code == ExitCode.OK, err
    fields = {p.name: p.data for p in fake.requests[0].parts if p.name != "images"}
    assert fields["think"] == b"false"
    assert json.loads(fields["format"]) == SCHEMA


async def test_thinking_is_dimmed_on_a_terminal(aiohttp_server: Any) -> None:
    fake = answer(*THINKING, {"type": "chunk", "content": "A cat."})
    code, out, _ = await ask(fake, aiohttp_server, AskRequest("Q", "m", think=True), terminal=True)
    assert code == ExitCode.OK
    assert out == f"{DIM}Let me {RESET}{DIM}look.{RESET}\n\nA cat.\n"


async def test_thinking_goes_to_stderr_when_stdout_is_redirected(aiohttp_server: Any) -> None:
    fake = answer(
        *THINKING,
        {"type": "notice", "code": "images_ignored", "message": "no eyes"},
        {"type": "future_event", "x": 1},
        {"type": "chunk", "content": "A cat."},
    )
    code, out, err = await ask(fake, aiohttp_server, AskRequest("Q", "m", think="low"))
    assert code == ExitCode.OK
    assert out == "A cat.\n", "stdout holds only the answer; unknown event types are skipped"
    assert err == f"Let me look.\nnotice (images_ignored): no eyes\nconversation {CONVERSATION_ID}\n"


async def test_events_are_parsed_by_the_sse_rules_not_by_the_gateways_framing(aiohttp_server: Any) -> None:
    start = json.dumps(start_event())
    raw = (
        f": ping\r\n\r\nevent: message\r\ndata: {start}\r\n\r\n"
        'data: {"type": "chunk",\ndata: "content": "split "}\n\n'
        'data: {"type": "chunk", "content": "h\xe9llo"}\n\n' + f"data: {json.dumps(done_event())}"
    ).encode()
    fake = FakeGateway(writes=[raw[i : i + 7] for i in range(0, len(raw), 7)])  # packets cut anywhere
    code, out, err = await ask(fake, aiohttp_server, AskRequest("Q", "m"))
    assert code == ExitCode.OK, err
    assert out == "split h\xe9llo\n"


async def test_an_error_event_exits_1_and_says_what_was_kept(aiohttp_server: Any) -> None:
    error = {"type": "error", "code": "upstream_failed", "message": "the model crashed", "partial": True, "saved": True}
    fake = FakeGateway(writes=sse(start_event(), {"type": "chunk", "content": "Half an"}, error))
    code, out, err = await ask(fake, aiohttp_server, AskRequest("Q", "m"))
    assert code == ExitCode.FAILED
    assert out == "Half an\n"
    assert err == (
        f"retina ask: error upstream_failed: the model crashed\n7 characters kept in conversation {CONVERSATION_ID}\n"
    )


@pytest.mark.parametrize(
    ("writes", "message"),
    [
        (sse(start_event(), {"type": "chunk", "content": "cut"}), "the stream ended without a final event"),
        ([b"data: not json\n\n"], "the stream broke: an event is not JSON"),
    ],
)
async def test_a_broken_stream_exits_1(aiohttp_server: Any, writes: list[bytes], message: str) -> None:
    code, _, err = await ask(FakeGateway(writes=writes), aiohttp_server, AskRequest("Q", "m"))
    assert code == ExitCode.FAILED
    assert message in err


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [(503, "busy", ExitCode.FAILED), (429, "rate_limited", ExitCode.FAILED), (422, "invalid_image", ExitCode.REFUSED)],
)
async def test_http_errors_print_status_code_and_retry_after(
    aiohttp_server: Any, status: int, code: str, expected: ExitCode
) -> None:
    fake = FakeGateway(
        status=status, error_body={"error": {"code": code, "message": "try later"}}, extra_headers={"Retry-After": "7"}
    )
    result, out, err = await ask(fake, aiohttp_server, AskRequest("Q", "m"))
    assert result == expected
    assert err == f"retina ask: {status} {code}: try later (retry after 7s)\n"
    assert out == ""


async def test_a_done_that_was_not_saved_is_said(aiohttp_server: Any) -> None:
    fake = FakeGateway(writes=sse(start_event(), {"type": "chunk", "content": "x"}, done_event("length", saved=False)))
    code, _, err = await ask(fake, aiohttp_server, AskRequest("Q", "m"))
    assert code == ExitCode.OK
    assert "length limit" in err
    assert "NOT saved" in err


async def test_thinking_is_dimmed_in_a_real_terminal(aiohttp_server: Any, tmp_path: Path) -> None:
    fake = answer(*THINKING, {"type": "chunk", "content": "A cat."})
    server = await aiohttp_server(fake.app())
    env = ask_env(tmp_path, RETINA_TOKEN=SERVICE_TOKEN, RETINA_GATEWAY_URL=str(server.make_url("")))
    child = AskProcess(["--think", "What is it?", "-m", "qwen3"], env)
    try:
        assert await child.wait() == 0, child.describe()
    finally:
        child.close()
    assert child.out.data == f"{DIM}Let me {RESET}{DIM}look.{RESET}\r\n\r\nA cat.\r\n".encode()
    assert fake.requests[0].json == {"message": "What is it?", "model": "qwen3", "think": True}


async def test_a_second_ctrl_c_quits_without_waiting_for_the_final_event(aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeGateway(writes=sse(start_event(), {"type": "chunk", "content": "going"}), hold=True)
    server = await aiohttp_server(fake.app())
    env = ask_env(tmp_path, RETINA_TOKEN=SERVICE_TOKEN, RETINA_GATEWAY_URL=str(server.make_url("")))
    child = AskProcess(["Q", "-m", "m"], env)
    try:
        await child.wait_for("going")
        child.ctrl_c()
        await child.wait_for("stopping", stream="err")
        child.ctrl_c()
        code = await child.wait()
    finally:
        child.close()
    assert code == 130, child.describe()
    assert fake.stops == [STREAM_ID]
    assert "interrupted; the request was abandoned" in child.err.text


async def test_ctrl_c_before_the_stream_starts_abandons_the_request(aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeGateway(hold_before_headers=True)
    server = await aiohttp_server(fake.app())
    env = ask_env(tmp_path, RETINA_TOKEN=SERVICE_TOKEN, RETINA_GATEWAY_URL=str(server.make_url("")))
    child = AskProcess(["Q", "-m", "m"], env)
    try:
        for _ in range(200):  # until the request is in
            if fake.requests:
                break
            await asyncio.sleep(0.02)
        child.ctrl_c()
        code = await child.wait()
    finally:
        child.close()
    assert code == 130, child.describe()
    assert fake.stops == [], "no stream ID yet, so nothing to stop"
    assert "interrupted; the request was abandoned" in child.err.text


# ---- arguments and configuration -------------------------------------------------------------------


def parse(*argv: str) -> Any:
    return _parser().parse_args(["ask", *argv])


def test_think_takes_a_level_or_stands_alone_before_the_question() -> None:
    assert (parse("--think", "What?", "-m", "x").question_after_think, parse("--think", "Q", "-m", "x").think) == (
        "What?",
        True,
    )
    assert parse("Q", "--think", "HIGH", "-m", "x").think == "high"
    assert parse("Q", "--think=false", "-m", "x").think is False
    assert parse("Q", "-m", "x", "--think").think is True
    assert parse("Q", "-m", "x").think is None
    assert parse("Q", "--think", "max", "-m", "x").think == "max"


def test_the_cli_offers_exactly_the_gateways_think_levels() -> None:
    from services.vision_gateway.chat.request import THINK_LEVELS as LEVELS

    assert THINK_LEVELS == LEVELS


def test_format_reads_json_or_a_schema_file(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    assert parse("Q", "-m", "x", "--format", "json").format == "json"
    assert parse("Q", "-m", "x", "--format", str(schema)).format == SCHEMA


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "missing.json"], "cannot read the schema file 'missing.json'"),
        (["--format", "LIST"], "must hold a JSON schema object"),
        (["--format", "BROKEN"], "is not JSON"),
        (["--conversation", "abc"], "'abc' is not a conversation ID"),
        (["-i", "DIR"], "cannot read image"),
        (["--timeout", "abc"], "'abc' is not a number of seconds between 0 and 86400"),
        (["--timeout", "-1"], "'-1' is not a number of seconds"),
    ],
)
def test_bad_arguments_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "broken.json").write_text("{")
    paths = {"LIST": str(tmp_path / "list.json"), "BROKEN": str(tmp_path / "broken.json"), "DIR": str(tmp_path)}
    with pytest.raises(SystemExit) as exit_info:
        parse("Q", "-m", "x", *[paths.get(a, a) for a in argv])
    assert exit_info.value.code == ExitCode.USAGE
    assert message in capsys.readouterr().err


def test_config_flags_win_then_the_environment_then_local_env(tmp_path: Path) -> None:
    write_env_file(tmp_path / "local.env", {"SERVICE_TOKENS": "file-token,second", "RETINA_GATEWAY_URL": "http://f:1"})
    env = {"RETINA_STATE_DIR": str(tmp_path)}
    assert load_config(env) == AskConfig("http://f:1", "file-token", "alice")
    env |= {"SERVICE_TOKENS": " env-list-token , x", "RETINA_GATEWAY_URL": "http://e:2", "RETINA_USER_ID": "dave"}
    assert load_config(env) == AskConfig("http://e:2", "env-list-token", "dave")
    env |= {"RETINA_TOKEN": "retina-token"}
    assert load_config(env, gateway_url="http://flag:3", user_id="erin") == AskConfig(
        "http://flag:3", "retina-token", "erin"
    )
    bare = {"RETINA_STATE_DIR": str(tmp_path / "none"), "RETINA_TOKEN": "t", "VISION_GATEWAY_PORT": "9009"}
    assert load_config(bare).gateway_url == "http://127.0.0.1:9009"
    with pytest.raises(MissingToken, match="RETINA_TOKEN"):
        load_config({"RETINA_STATE_DIR": str(tmp_path / "none")})


def test_retina_up_remembers_its_gateway_url_next_to_the_secrets(tmp_path: Path) -> None:
    secrets = local_secrets(tmp_path)
    remember_gateway_url(tmp_path, "http://127.0.0.1:9002")
    stored = read_env_file(tmp_path / "local.env")
    assert stored == {**secrets, "RETINA_GATEWAY_URL": "http://127.0.0.1:9002"}
    assert oct((tmp_path / "local.env").stat().st_mode & 0o777) == "0o600"
    assert local_secrets(tmp_path) == secrets, "the secrets survive; the URL is not a service setting"


def test_a_question_given_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_ask(parse("Q", "--think", "extra", "-m", "x")) == ExitCode.USAGE
    assert "unexpected argument 'extra'" in capsys.readouterr().err


async def test_a_gateway_gone_silent_mid_answer_is_given_up_on(aiohttp_server: Any) -> None:
    """No byte, not even a ping, for the silence timeout: exit 1 saying so, not a hang until Ctrl-C."""
    fake = FakeGateway(writes=sse(start_event(), {"type": "chunk", "content": "half"}), hold=True)
    server = await aiohttp_server(fake.app())
    config = AskConfig(str(server.make_url("")), SERVICE_TOKEN, "carol")
    out, err = io.StringIO(), io.StringIO()
    progress = UploadProgress(0, err, enabled=False)
    session = AskSession(
        config, AskRequest("Q", "m"), Renderer(out, err, terminal=False), progress, silence_timeout=0.5
    )
    started = time.perf_counter()
    code = await session.run()
    assert code == ExitCode.FAILED
    assert 0.4 < time.perf_counter() - started < 5
    assert out.getvalue() == "half\n"
    assert "the gateway sent nothing for 0.5 s (not even a keep-alive ping)" in err.getvalue()
    assert fake.stops == [], "silence is not a stop request"


def test_timeout_takes_seconds_and_zero_means_never() -> None:
    assert parse("Q", "-m", "x").timeout == 120.0
    assert parse("Q", "-m", "x", "--timeout", "2.5").timeout == 2.5
    assert parse("Q", "-m", "x", "--timeout", "0").timeout == 0.0  # run_ask passes None: no read timeout


async def test_an_error_while_thinking_counts_the_kept_thinking(aiohttp_server: Any) -> None:
    error = {"type": "error", "code": "upstream_failed", "message": "the model crashed", "partial": True, "saved": True}
    fake = FakeGateway(writes=sse(start_event(), {"type": "thinking", "content": "Let me"}, error))
    code, _, err = await ask(fake, aiohttp_server, AskRequest("Q", "m"))
    assert code == ExitCode.FAILED
    assert f"0 characters (and 6 of thinking) kept in conversation {CONVERSATION_ID}\n" in err


async def test_a_gateway_that_never_accepts_the_connection_is_unreachable(tmp_path: Path) -> None:
    """SYNs dropped (a full accept queue here, a firewall in life): a connect timeout, exit 5, not a
    "sent nothing" silence and not a traceback, whatever --timeout says."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        host, port = listener.getsockname()
        # Fill the accept queue (never accepted) until a connect hangs: from then on SYNs go unanswered.
        fillers: list[socket.socket] = []
        while len(fillers) < 16:
            filler = socket.socket()
            filler.settimeout(0.3)
            try:
                filler.connect((host, port))
            except TimeoutError:
                filler.close()
                break
            fillers.append(filler)
        try:
            config = AskConfig(f"http://{host}:{port}", SERVICE_TOKEN, "carol")
            out, err = io.StringIO(), io.StringIO()
            renderer, progress = Renderer(out, err, terminal=False), UploadProgress(0, err, enabled=False)
            session = AskSession(
                config, AskRequest("Q", "m"), renderer, progress, silence_timeout=None, connect_timeout=0.5
            )
            started = time.perf_counter()
            code = await session.run()
        finally:
            for filler in fillers:
                filler.close()
    assert code == ExitCode.UNREACHABLE, err.getvalue()
    assert time.perf_counter() - started < 5, err.getvalue()
    assert f"cannot reach the gateway at http://{host}:{port}: no connection within 0.5 s" in err.getvalue()


def test_retina_up_remembers_the_image_store_url_too_for_make_newman(tmp_path: Path) -> None:
    secrets = local_secrets(tmp_path)
    remember_gateway_url(tmp_path, "http://127.0.0.1:9002", "http://127.0.0.1:9001")
    stored = read_env_file(tmp_path / "local.env")
    assert stored == {
        **secrets,
        "RETINA_GATEWAY_URL": "http://127.0.0.1:9002",
        "RETINA_IMAGE_STORE_URL": "http://127.0.0.1:9001",
    }
