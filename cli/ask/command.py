"""`retina ask "What is this?" -i photo.jpg -m llava`: the subcommand's arguments and its entry point."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

from cli.ask.config import MissingToken, load_config
from cli.ask.exits import TABLE, ExitCode
from cli.ask.progress import UploadProgress
from cli.ask.render import Renderer
from cli.ask.request import THINK_LEVELS, AskRequest, FormatFileError, load_format, parse_think
from cli.ask.session import SILENCE_TIMEOUT_SECONDS, AskSession

DESCRIPTION = """Ask a model about local images; the answer streams to stdout as it is generated.
Uploads go through the gateway (multipart) with a progress bar on stderr; notices, the outcome and
the conversation ID (for --conversation next time) go to stderr. Ctrl-C stops the answer and
reports what the conversation kept.

configuration (flags win, then the environment, then ./var/local.env written by `retina up`):
  RETINA_GATEWAY_URL   gateway base URL (default http://127.0.0.1:$VISION_GATEWAY_PORT, port 8082)
  RETINA_TOKEN         bearer token (else the first of SERVICE_TOKENS, else local.env's)
  RETINA_USER_ID       acting user, sent as X-User-Id (default alice)
  RETINA_STATE_DIR     where local.env is (default ./var)"""


def _image(value: str) -> Path:
    path = Path(value)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read image {value!r}: not a readable file")
    return path


def _conversation(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a conversation ID (a UUID)") from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds between 0 and 86400")
    return seconds


def _format(value: str) -> Any:
    try:
        return load_format(value)
    except FormatFileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _ThinkAction(argparse.Action):
    """`--think` alone means on. argparse hands it the next word whatever it is, so a word that is not
    a level (`retina ask --think "What is this?"`) is taken back as the question."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        if values is None:
            setattr(namespace, self.dest, True)
            return
        try:
            setattr(namespace, self.dest, parse_think(values))
        except ValueError:
            setattr(namespace, self.dest, True)
            namespace.question_after_think = values


def add_parser(commands: Any) -> None:
    ask = commands.add_parser(
        "ask",
        help="ask a model about local images; the answer streams to the terminal",
        description=DESCRIPTION,
        epilog=TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ask.add_argument("question", nargs="?", help="the message to send")
    ask.add_argument(
        "-i",
        "--image",
        dest="images",
        action="append",
        type=_image,
        default=[],
        metavar="FILE",
        help="an image to upload with the question (repeatable)",
    )
    ask.add_argument("-m", "--model", required=True, help="the Ollama model, e.g. llava")
    ask.add_argument("--conversation", type=_conversation, metavar="ID", help="continue this conversation")
    ask.add_argument(
        "--think",
        nargs="?",
        action=_ThinkAction,
        metavar="LEVEL",
        help=f"let a thinking model think, shown dimmed: bare, {'|'.join(THINK_LEVELS)}, or false",
    )
    ask.add_argument(
        "--format",
        type=_format,
        metavar="json|SCHEMA.json",
        help="structured output: `json`, or a file holding a JSON schema",
    )
    ask.add_argument(
        "--timeout",
        type=_seconds,
        default=SILENCE_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"give up after this long without a byte from the gateway (default {SILENCE_TIMEOUT_SECONDS:g}; "
        "0 = never)",
    )
    ask.add_argument("--gateway", metavar="URL", help="gateway base URL (overrides RETINA_GATEWAY_URL)")
    ask.add_argument("--user", metavar="ID", help="acting user (overrides RETINA_USER_ID)")
    ask.set_defaults(question_after_think=None)


def run_ask(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    question = args.question
    if question is not None and args.question_after_think is not None:
        print(f"retina ask: unexpected argument {args.question_after_think!r}", file=err)
        return ExitCode.USAGE
    question = question if question is not None else args.question_after_think
    if not question or not question.strip():
        print("retina ask: the question is required", file=err)
        return ExitCode.USAGE
    try:
        config = load_config(os.environ, gateway_url=args.gateway, user_id=args.user)
    except MissingToken as exc:
        print(f"retina ask: {exc}", file=err)
        return ExitCode.AUTH
    request = AskRequest(
        message=question,
        model=args.model,
        images=args.images,
        conversation_id=args.conversation,
        think=args.think,
        format=args.format,
    )
    progress = UploadProgress(request.upload_bytes(), err, enabled=err.isatty())
    renderer = Renderer(out, err, terminal=out.isatty())
    try:
        session = AskSession(config, request, renderer, progress, silence_timeout=args.timeout or None)
        return asyncio.run(session.run())
    except BrokenPipeError:
        # stdout's reader left (`| head -3`): stop quietly, as Python's docs advise for pipes.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.FAILED
