"""The `retina` command as an operator runs it: real processes, real ports, real signals."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from cli.ollama_emulator import CANNED_NOTICE, OllamaEmulator, default_models
from cli.ollama_probe import OllamaReport, describe, describe_all, probe_all, probe_ollama
from cli.ports import PortInUse
from cli.runner import LISTEN_BACKLOG, ServiceSpec, serve
from common.migrations import migration_ids
from tests.conftest import ROOT, SERVICE_TOKEN, SIGNING_KEY
from tests.ports import free_port
from tests.slow_client import multipart
from tests.test_ollama_emulator import emulator_cli

MIGRATION_COUNT = len(migration_ids(ROOT / "migrations"))  # a fresh database gets every one


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test URL
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class OutputCollector:
    """Reads a child's stdout in a thread so a test can wait for a line without blocking."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(process,), daemon=True)
        self._thread.start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    def join(self) -> None:
        self._thread.join(10)

    def wait_for(self, text: str, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if any(text in line for line in self.lines):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not printed within {timeout}s:\n{''.join(self.lines)}")


@contextmanager
def retina(
    *args: str, env: dict[str, str], stdin: int | None = None
) -> Iterator[tuple[subprocess.Popen[str], OutputCollector]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    collector = OutputCollector(process)
    try:
        yield process, collector
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        collector_done = process.stdout
        collector.join()
        for stream in (collector_done, process.stdin):
            if stream is not None:
                stream.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus anything retina reads, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SERVICE_TOKENS")}
    env.update(extra)
    return env


@pytest.mark.slow
def test_retina_up_on_a_bare_machine_serves_both_services(tmp_path: Path) -> None:
    """No DATABASE_URL: an embedded PostgreSQL is started, migrated, and both services come up."""
    store_port, gateway_port = free_port(), free_port()
    env = clean_env(RETINA_STATE_DIR=str(tmp_path / "state"))
    env.pop("XDG_RUNTIME_DIR", None)  # platformdirs warned about it at import, before the banner
    with retina("up", "--store-port", str(store_port), "--gateway-port", str(gateway_port), env=env) as (
        process,
        output,
    ):
        elapsed = output.wait_for("Press Ctrl-C to stop.", timeout=60)
        banner = "".join(output.lines)
        # One line (the migrations), the banner's blank line, the banner: no warnings, no log lines.
        assert banner.splitlines()[0].startswith(f"migrations: applied {MIGRATION_COUNT} "), banner
        assert banner.splitlines()[2].startswith("retina is up"), banner
        assert "XDG_RUNTIME_DIR" not in banner
        assert f"http://127.0.0.1:{store_port}" in banner
        assert f"http://127.0.0.1:{gateway_port}" in banner
        assert "embedded PostgreSQL" in banner
        assert "curl" in banner
        secrets = (tmp_path / "state" / "local.env").read_text()
        token = next(line.split("=", 1)[1] for line in secrets.splitlines() if line.startswith("SERVICE_TOKENS="))
        assert f"service token   {token}" in banner
        assert oct((tmp_path / "state" / "local.env").stat().st_mode & 0o777) == "0o600"
        demo_url = f"http://127.0.0.1:{gateway_port}/demo#token={token}&user=alice"
        assert f"demo chat       {demo_url}" in banner, "retina up turns the demo page on and prints it"
        status, page = http_get(demo_url.split("#")[0])
        assert status == 200
        assert "<title>retina demo chat</title>" in page
        for port in (store_port, gateway_port):
            for path in ("/livez", "/readyz", "/metrics"):
                status, body = http_get(f"http://127.0.0.1:{port}{path}")
                assert status == 200, (port, path, body)
        print(f"retina up: ready in {elapsed:.2f}s")
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0, "".join(output.lines)
    # Nothing listens after a clean stop (SO_REUSEADDR tolerates TIME_WAIT, not a listener).
    for port in (store_port, gateway_port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_single_service_starts_and_stops_on_sigterm(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        DATABASE_URL=database_url,
        SERVICE_TOKENS=SERVICE_TOKEN,
        IMAGE_SIGNING_KEYS=SIGNING_KEY,
        IMAGE_STORAGE_PATH=str(tmp_path / "images"),
    )
    with retina("vision-gateway", "--host", "127.0.0.1", "--port", str(port), env=env) as (process, output):
        output.wait_for('"event": "service_started"', timeout=30)
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, body
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_invalid_configuration_refuses_to_start_with_one_line_per_problem(tmp_path: Path) -> None:
    env = clean_env(
        DATABASE_URL="postgresql://u:hunter2-secret@db/x",
        SERVICE_TOKENS="short",
        IMAGE_MAX_SIZE_MB="-1",
        IMAGE_ALLOWED_TYPES="image/svg+xml",
        IMAGE_STORAGE_PATH=str(tmp_path),
    )
    env.pop("IMAGE_SIGNING_KEYS", None)
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "image-store"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "retina: configuration is invalid:"
    assert lines[1:] == [
        "  - SERVICE_TOKENS: every token must be at least 16 characters long",
        "  - IMAGE_MAX_SIZE_MB must be at least 1, got -1",
        "  - IMAGE_ALLOWED_TYPES: image/svg+xml is never allowed (SVG can carry script)",
        "  - IMAGE_SIGNING_KEYS is required (secret for signed image URLs) but is not set",
    ]
    assert "hunter2" not in result.stderr


def test_retina_up_takes_ports_from_the_environment_and_flags_win(database_url: str, tmp_path: Path) -> None:
    """IMAGE_STORE_PORT / VISION_GATEWAY_PORT (listed in .env.example) are honoured; a flag overrides one."""
    env_store, env_gateway, flag_gateway = free_port(), free_port(), free_port()
    env = clean_env(
        DATABASE_URL=database_url,
        RETINA_STATE_DIR=str(tmp_path / "state"),
        IMAGE_STORE_PORT=str(env_store),
        VISION_GATEWAY_PORT=str(env_gateway),
        OLLAMA_URL="http://127.0.0.1:1",
        OLLAMA_URLS="http://127.0.0.1:2,http://127.0.0.1:3",
    )
    with retina("up", "--gateway-port", str(flag_gateway), "--ollama-url", "http://127.0.0.1:9", env=env) as (
        process,
        output,
    ):
        output.wait_for("Press Ctrl-C to stop.", timeout=60)
        banner = "".join(output.lines)
        # --ollama-url wins over OLLAMA_URL(S); nothing answers there, and the banner says so and what to do.
        assert "ollama          http://127.0.0.1:9  did NOT answer (connection refused" in banner, banner
        assert not any(f"http://127.0.0.1:{port}  " in banner for port in (1, 2, 3)), banner
        assert "--ollama-url URL (or OLLAMA_URL)" in banner
        assert "retina up --ollama-emulator" in banner
        assert f"image-store     http://127.0.0.1:{env_store}" in banner
        assert f"vision-gateway  http://127.0.0.1:{flag_gateway}" in banner
        assert http_get(f"http://127.0.0.1:{env_store}/livez")[0] == 200
        assert http_get(f"http://127.0.0.1:{flag_gateway}/livez")[0] == 200
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{env_gateway}/livez", timeout=2)
        # `retina ask` finds this gateway and its token in local.env alone (Ollama is down: a 503, not a 401).
        ask_env = {"PATH": os.environ.get("PATH", ""), "RETINA_STATE_DIR": str(tmp_path / "state")}
        ask = subprocess.run(
            [sys.executable, "-m", "cli.main", "ask", "hi", "-m", "llava"],
            cwd=ROOT,
            env=ask_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ask.returncode == 1, ask.stderr
        assert ask.stderr.startswith("retina ask: 503 upstream_unavailable: "), ask.stderr
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0, "".join(output.lines)


def test_retina_up_refuses_a_malformed_port_variable(tmp_path: Path) -> None:
    env = clean_env(RETINA_STATE_DIR=str(tmp_path / "state"), IMAGE_STORE_PORT="eighty")
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert "IMAGE_STORE_PORT" in result.stderr
    assert not (tmp_path / "state" / "postgres").exists()  # refused before starting anything


def test_make_up_passes_its_arguments_to_retina_up() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        [make, "-n", "up", "ARGS=--store-port 9001 --gateway-port 9002"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert ".venv/bin/retina up --store-port 9001 --gateway-port 9002" in result.stdout


def test_retina_up_with_the_emulator_answers_the_readme_questions(database_url: str, tmp_path: Path) -> None:
    """No Ollama, no GPU: `retina up --ollama-emulator`, then `retina ask` with an image and --think works,
    and both the banner and the answer say that the answer is canned."""
    store_port, gateway_port = free_port(), free_port()
    state = tmp_path / "state"
    env = clean_env(DATABASE_URL=database_url, RETINA_STATE_DIR=str(state), OLLAMA_URL="http://127.0.0.1:9")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), "grey").save(photo)
    args = ("up", "--store-port", str(store_port), "--gateway-port", str(gateway_port), "--ollama-emulator")
    with retina(*args, env=env) as (process, output):
        output.wait_for("Press Ctrl-C to stop.", timeout=60)
        banner = "".join(output.lines)
        assert "EMULATOR: answers are canned, no model runs" in banner, banner
        assert "5 models, 3 see images, 2 think; qwen3-vl does both" in banner
        ask_env = {"PATH": os.environ.get("PATH", ""), "RETINA_STATE_DIR": str(state)}
        for question in (
            ["What is in this picture?", "-i", str(photo), "-m", "llava"],
            ["Which animal?", "-i", str(photo), "-m", "qwen3-vl", "--think", "high"],
        ):
            ask = subprocess.run(
                [sys.executable, "-m", "cli.main", "ask", *question],
                cwd=ROOT,
                env=ask_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert ask.returncode == 0, ask.stderr
            assert CANNED_NOTICE in ask.stdout, ask.stdout
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0, "".join(output.lines)


async def test_the_banner_counts_a_real_ollamas_models_as_the_gateway_detects_them() -> None:
    """Old and new capability signals both count (gemma3 here has only `vision.block_count`)."""
    async with TestServer(OllamaEmulator(default_models()).make_app()) as server:
        url = str(server.make_url("")).rstrip("/")
        report = await probe_ollama(url)
    assert report == OllamaReport(True, models=5, vision=2, thinking=1)
    assert describe(url, report, emulated=False) == [f"{url}  answered: 5 models, 2 can see images"]
    no_vision = describe(url, OllamaReport(True, models=1), emulated=False)
    assert "ollama pull llava" in no_vision[1]


async def test_the_banner_probes_every_backend_of_a_fleet_at_once() -> None:
    """OLLAMA_URLS: one line per backend, worded as for one; what to do once, when none answered.
    The probes run together: two backends that never answer cost one deadline, not two."""
    async with TestServer(OllamaEmulator(default_models()).make_app()) as server:
        url = str(server.make_url("")).rstrip("/")
        refused = f"http://127.0.0.1:{free_port()}"
        reports = await probe_all([refused, url])
        assert describe_all([refused, url], reports, emulated=False) == [
            f"{refused}  did NOT answer (connection refused: nothing listens there)",
            f"{url}  answered: 5 models, 2 can see images",
        ]
        assert describe_all([url], reports[1:], emulated=False) == describe(url, reports[1], emulated=False)

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    async with await asyncio.start_server(never_answer, "127.0.0.1", 0) as silent:
        silent_url = f"http://127.0.0.1:{silent.sockets[0].getsockname()[1]}"
        started = time.monotonic()
        reports = await probe_all([silent_url, silent_url], seconds=0.5)
        assert time.monotonic() - started < 0.9
    lines = describe_all(
        [silent_url, refused], [reports[0], OllamaReport(False, problem="connection refused")], emulated=False
    )
    assert lines[:2] == [
        f"{silent_url}  did NOT answer (no answer within 0.5s)",
        f"{refused}  did NOT answer (connection refused)",
    ]
    assert "retina up --ollama-emulator" in lines[-1]
    no_vision = describe_all([url, refused], [OllamaReport(True, models=1), reports[0]], emulated=False)
    assert no_vision[-1].startswith("none can see images: `ollama pull llava`")


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (("up", "--gateway-port", "{free}", "--store-port", "{busy}"), "--store-port"),
        (("up", "--store-port", "{free}", "--gateway-port", "{busy}"), "--gateway-port"),
        (("vision-gateway", "--host", "127.0.0.1", "--port", "{busy}"), "--port"),
        (("image-store", "--host", "127.0.0.1", "--port", "{busy}"), "--port"),
    ],
)
def test_a_busy_port_is_one_line_naming_it_its_holder_and_the_flag(
    database_url: str, tmp_path: Path, command: tuple[str, ...], flag: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        args = [arg.format(busy=busy, free=free_port()) for arg in command]
        env = clean_env(
            DATABASE_URL=database_url,
            SERVICE_TOKENS=SERVICE_TOKEN,
            IMAGE_SIGNING_KEYS=SIGNING_KEY,
            IMAGE_STORAGE_PATH=str(tmp_path / "images"),
            RETINA_STATE_DIR=str(tmp_path / "state"),
        )
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {busy} on 127.0.0.1" in lines[0]
    assert f"already in use by {Path('/proc/self/comm').read_text().strip()} (pid {os.getpid()})" in lines[0]
    assert lines[0].endswith(f"pick another with {flag} PORT")
    assert "Traceback" not in result.stdout


class _Listening(Exception):
    """Raised from serve()'s on_started to leave it once the sockets are up."""


def _listen_backlog(port: int) -> int:
    """The accept-queue limit of the socket listening on `port`, as the kernel reports it (ss's Send-Q)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    return int(out.split()[2])


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs iproute2's ss to read the listen backlog")
async def test_services_listen_with_a_backlog_for_bursts_of_connections() -> None:
    port = free_port()
    backlogs: list[int] = []

    async def started() -> None:
        backlogs.append(_listen_backlog(port))
        raise _Listening

    with pytest.raises(_Listening):
        await serve([ServiceSpec("x", web.Application(), "127.0.0.1", port)], shutdown_timeout=1, on_started=started)
    assert backlogs == [LISTEN_BACKLOG]
    assert LISTEN_BACKLOG >= 1024  # aiohttp's default of 128 lost streams while 8,000 opened (cli/runner.py)


async def test_serve_turns_a_port_taken_after_the_check_into_the_same_line() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"port {busy} on 127\.0\.0\.1 \(x\).*pick another with --x-port PORT"):
            await serve([ServiceSpec("x", web.Application(), "127.0.0.1", busy, "--x-port")], shutdown_timeout=1)


def test_retina_up_starts_quietly_logs_to_a_file_and_repeats_the_banner_on_enter(
    empty_database_url: str, tmp_path: Path
) -> None:
    """A fresh start (no migration applied yet): at most 15 lines before the banner, migrations in one;
    a request's log line goes to <state>/retina.log, not the terminal; Enter prints the banner again.
    With OLLAMA_URLS, each backend is probed and has its line (the one down is no warning before it)."""
    store_port, gateway_port = free_port(), free_port()
    state = tmp_path / "state"
    args = ("up", "--store-port", str(store_port), "--gateway-port", str(gateway_port))
    with ExitStack() as stack:
        emulator = stack.enter_context(emulator_cli(ROOT, "--models", "llava"))
        env = clean_env(
            DATABASE_URL=empty_database_url, RETINA_STATE_DIR=str(state), OLLAMA_URLS=f"http://127.0.0.1:9,{emulator}"
        )
        process, output = stack.enter_context(retina(*args, env=env, stdin=subprocess.PIPE))
        output.wait_for("Press Ctrl-C to stop.", timeout=60)
        banner = "".join(output.lines)
        assert "ollama          http://127.0.0.1:9  did NOT answer (connection refused" in banner, banner
        assert f"\n                  {emulator}  answered: 1 models, 1 can see images\n" in banner, banner
        before = output.lines[: next(i for i, line in enumerate(output.lines) if "retina is up" in line)]
        assert len(before) <= 15, "".join(before)
        assert any(line.startswith(f"migrations: applied {MIGRATION_COUNT} (0001_chat_schema") for line in before), (
            before
        )
        assert not any("yoyo" in line or "Warning" in line for line in before), "".join(before)
        log_file = state / "retina.log"
        assert f"logs            {log_file}" in "".join(output.lines)

        photo = io.BytesIO()
        Image.new("RGB", (32, 24), "teal").save(photo, "PNG")
        body, content_type = multipart([("file", photo.getvalue(), "photo.png", "image/png")])
        upload = urllib.request.Request(
            f"http://127.0.0.1:{store_port}/api/images",
            data=body,
            headers={"Authorization": f"Bearer {_token(state)}", "X-User-Id": "alice", "Content-Type": content_type},
        )
        with urllib.request.urlopen(upload, timeout=10) as response:  # noqa: S310 - loopback test URL
            assert response.status == 201
        deadline = time.monotonic() + 10
        while "image_stored" not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "image_stored" in log_file.read_text()
        assert not any("image_stored" in line for line in output.lines)

        printed = len(output.lines)
        assert process.stdin is not None
        process.stdin.write("\n")
        process.stdin.flush()
        deadline = time.monotonic() + 10
        while sum("retina is up" in line for line in output.lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("retina is up" in line for line in output.lines[printed:]), "".join(output.lines[printed:])
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0, "".join(output.lines)


def _token(state: Path) -> str:
    secrets = (state / "local.env").read_text().splitlines()
    return next(line.split("=", 1)[1] for line in secrets if line.startswith("SERVICE_TOKENS="))
