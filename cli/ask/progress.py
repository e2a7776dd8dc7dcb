"""A one-line upload progress bar on stderr, drawn by hand.

Hand-rolled rather than tqdm/rich: it is one line of `\\r`-rewritten text, the bytes counted are the
ones our own upload generator hands to aiohttp, and a dependency for that is not worth pinning.
Drawn only when stderr is a terminal; a pipe or a log file gets nothing.
"""

from __future__ import annotations

import time
from typing import TextIO

WIDTH = 30
REDRAW_SECONDS = 0.1


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class UploadProgress:
    def __init__(self, total_bytes: int, stream: TextIO, *, enabled: bool) -> None:
        self.total = total_bytes
        self.sent = 0
        self._stream = stream
        self._enabled = enabled and total_bytes > 0
        self._drawn_at = 0.0
        self._drawn_sent = -1
        self._label = ""
        self.finished = False

    def file(self, label: str) -> None:
        self._label = label
        self._draw(force=True)

    def advance(self, count: int) -> None:
        self.sent += count
        self._draw(force=self.sent >= self.total)

    def finish(self) -> None:
        """End the bar's line (once) so whatever is printed next starts on a line of its own."""
        if self._enabled and not self.finished:
            if self._drawn_sent != self.sent:
                self._draw(force=True)
            self._stream.write("\n")
            self._stream.flush()
        self.finished = True

    def _draw(self, *, force: bool) -> None:
        now = time.monotonic()
        if not self._enabled or self.finished or (not force and now - self._drawn_at < REDRAW_SECONDS):
            return
        self._drawn_at, self._drawn_sent = now, self.sent
        fraction = min(self.sent / self.total, 1.0)
        filled = int(WIDTH * fraction)
        bar = "#" * filled + "." * (WIDTH - filled)
        line = f"uploading {self._label} [{bar}] {fraction:4.0%} {human_bytes(self.sent)}/{human_bytes(self.total)}"
        self._stream.write("\r\x1b[K" + line)
        self._stream.flush()
