"""The `retina` command: run the stack, one service, migrations or maintenance."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from cli.ask.command import add_parser as add_ask_parser
from cli.ask.command import run_ask
from cli.ports import PortInUse, ensure_free
from cli.runner import ServiceSpec, load_or_exit, run_on_loop, serve
from common.logging import configure_logging
from common.migrations import apply_migrations, rollback_last
from common.settings import CommonSettings, SettingsError, load_database_settings
from common.settings.kinds import directories_untouched
from common.tracing.config import tracing_exporters
from services.image_store.maintenance.repair_guard import DEFAULT_MAX_MISSING_PERCENT
from services.image_store.settings import load_image_store_settings
from services.vision_gateway.settings import load_gateway_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retina", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole stack locally (embedded Postgres if needed)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--store-port", type=int, default=None, help="default: IMAGE_STORE_PORT, else 8081")
    up.add_argument("--gateway-port", type=int, default=None, help="default: VISION_GATEWAY_PORT, else 8082")
    up.add_argument(
        "--verbose", action="store_true", help="every log line here (default: to retina.log in the state dir)"
    )
    ollama = up.add_mutually_exclusive_group()
    ollama.add_argument(
        "--ollama-url",
        metavar="URL",
        help="Ollama's base URL, the one backend (default: OLLAMA_URLS, else OLLAMA_URL, else :11434)",
    )
    ollama.add_argument(
        "--ollama-emulator",
        action="store_true",
        help="no Ollama needed: run the protocol emulator inside the stack (canned answers; models llava, qwen3-vl…)",
    )

    migrate = commands.add_parser("migrate", help="apply database migrations (under yoyo's lock)")
    migrate.add_argument("--rollback", action="store_true", help="undo the newest migration")

    for name in ("image-store", "vision-gateway"):
        service = commands.add_parser(name, help=f"run the {name} service")
        service.add_argument("--host", default=None)
        service.add_argument("--port", type=int, default=None)

    maintenance = commands.add_parser("maintenance", help="image retention and integrity")
    tasks = maintenance.add_subparsers(dest="task", required=True)
    tasks.add_parser("cleanup", help="delete expired images and unreferenced blobs")
    integrity = tasks.add_parser(
        "integrity",
        help="compare files on disk with the database",
        description=(
            "Compare the stored blobs (files under IMAGE_STORAGE_PATH, or objects under S3_PREFIX) with the "
            "database and print a JSON report; exit status 1 when it finds problems. With --repair, remove "
            "the rows (and images) of blobs whose bytes are missing or corrupt, and orphan files. A repair "
            "refuses, changes nothing and exits with status 3 when the storage looks wrong rather than "
            "damaged: IMAGE_STORAGE_PATH does not exist, the storage holds no blobs at all while the "
            "database records some, or more than --max-missing-percent of the recorded blobs are missing "
            "(a mistyped path or an unmounted volume would otherwise delete every image). Nothing here "
            "creates IMAGE_STORAGE_PATH."
        ),
    )
    integrity.add_argument(
        "--repair", action="store_true", help="remove rows of missing or corrupt blobs, and orphan files"
    )
    integrity.add_argument("--force", action="store_true", help="repair even when the storage looks wrong (see above)")
    integrity.add_argument(
        "--max-missing-percent",
        type=_percent,
        default=DEFAULT_MAX_MISSING_PERCENT,
        metavar="N",
        help="refuse a repair when more than N%% of the recorded blobs are missing (default: %(default)g)",
    )
    migrate_storage = tasks.add_parser(
        "migrate-storage", help="copy blobs from IMAGE_STORAGE_PATH to the S3_BUCKET (resumable, verified)"
    )
    migrate_storage.add_argument("--no-verify", action="store_true", help="skip reading each copy back")
    add_ask_parser(commands)
    return parser


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 0 to 100")
    return value


def _database_settings() -> tuple[str, Path]:
    """What `retina migrate` needs (no service tokens or keys: it serves nothing)."""
    settings = load_database_settings(os.environ)
    return settings.direct_url, settings.migrations_path


def _migrate(rollback: bool) -> int:
    try:
        database_url, migrations = _database_settings()
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"retina migrate: {problem}", file=sys.stderr)
        return 2
    if rollback:
        result = rollback_last(database_url, migrations)
        print("rolled back: " + (", ".join(result.rolled_back) or "nothing"))
    else:
        result = apply_migrations(database_url, migrations)
        print("applied: " + (", ".join(result.applied) or "nothing (already at head)"))
    return 0


def _run_service(name: str, host: str | None, port: int | None) -> int:
    if name == "image-store":
        from services.image_store.app import create_app as create_store

        store = load_or_exit(load_image_store_settings, os.environ)
        return _serve(name, store.common, lambda: create_store(store), host or store.host, port or store.port)
    from services.vision_gateway.app import create_app as create_gateway

    gateway = load_or_exit(load_gateway_settings, os.environ)
    return _serve(name, gateway.common, lambda: create_gateway(gateway), host or gateway.host, port or gateway.port)


def _serve(name: str, common: CommonSettings, make_app: Callable[[], web.Application], host: str, port: int) -> int:
    """Logging as configured first (the app logs while it is built), then serve until a signal."""
    load_or_exit(tracing_exporters, os.environ)  # OTEL_* variables this build cannot honour
    ensure_free(host, port, name, "--port")
    configure_logging(common.log_level, common.log_format)
    spec = ServiceSpec(name, make_app(), host, port)
    run_on_loop(serve([spec], shutdown_timeout=common.shutdown_timeout_seconds), common.event_loop)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except PortInUse as exc:
        print(f"retina {args.command}: {exc}", file=sys.stderr)
        return 2


def _command(args: argparse.Namespace) -> int:
    if args.command == "up":
        from cli.env_file import state_dir
        from cli.local_stack import run_local_stack

        configure_logging(os.environ.get("LOG_LEVEL", "info"), os.environ.get("LOG_FORMAT", "console"))
        run_local_stack(
            os.environ,
            host=args.host,
            store_port=args.store_port,
            gateway_port=args.gateway_port,
            state_dir=state_dir(),
            ollama_url=args.ollama_url,
            ollama_emulator=args.ollama_emulator,
            verbose=args.verbose,
        )
        return 0
    if args.command == "ask":
        return run_ask(args)
    if args.command == "migrate":
        configure_logging("warning", "console")
        return _migrate(args.rollback)
    if args.command in ("image-store", "vision-gateway"):
        return _run_service(args.command, args.host, args.port)
    if args.command == "maintenance":
        from services.image_store.maintenance.cli import run_maintenance

        with directories_untouched():  # a missing IMAGE_STORAGE_PATH must stay missing (see run_maintenance)
            store_settings = load_or_exit(load_image_store_settings, os.environ)
        configure_logging("warning", store_settings.common.log_format)
        return asyncio.run(
            run_maintenance(
                store_settings,
                args.task,
                repair=getattr(args, "repair", False),
                verify=not getattr(args, "no_verify", False),
                force=getattr(args, "force", False),
                max_missing_percent=getattr(args, "max_missing_percent", DEFAULT_MAX_MISSING_PERCENT),
            )
        )
    return 2


if __name__ == "__main__":
    sys.exit(main())
