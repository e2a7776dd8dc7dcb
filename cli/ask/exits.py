"""`retina ask`'s exit codes: one per kind of outcome, so scripts can tell them apart."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # the answer is complete
    FAILED = 1  # the answer failed: an error event, a broken stream, or a 5xx / 429 from the gateway
    USAGE = 2  # bad arguments or unreadable local files (argparse's own code)
    AUTH = 3  # no token configured, or the gateway refused it (401)
    REFUSED = 4  # the gateway refused the request (any other 4xx: bad_request, unknown_model, image_not_found, ...)
    UNREACHABLE = 5  # no connection to the gateway
    STOPPED = 130  # stopped: Ctrl-C (128 + SIGINT, as shells report it) or a stop request from elsewhere


TABLE = """exit codes:
  0    the answer is complete
  1    the answer failed (error event, broken or silent stream, gateway 5xx or 429)
  2    usage: bad arguments, an unreadable image or schema file
  3    no token configured, or the gateway refused it (401)
  4    the gateway refused the request (other 4xx: bad_request, unknown_model, image_not_found, ...)
  5    the gateway cannot be reached
  130  stopped (Ctrl-C); what the conversation kept is printed"""


def for_status(status: int) -> ExitCode:
    if status == 401:
        return ExitCode.AUTH
    if 400 <= status < 500 and status != 429:
        return ExitCode.REFUSED
    return ExitCode.FAILED
