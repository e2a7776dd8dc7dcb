"""What the terminal shows: the answer on stdout, everything about it on stderr.

Thinking is shown dimmed (ANSI SGR 2) in the answer's place when stdout is a terminal. When stdout is
redirected it goes to stderr as plain text instead, so stdout holds only the answer (a `--format json`
answer stays parseable by the next program in the pipe).
"""

from __future__ import annotations

from typing import TextIO

DIM = "\x1b[2m"
RESET = "\x1b[0m"


class Renderer:
    def __init__(self, out: TextIO, err: TextIO, *, terminal: bool) -> None:
        self.out = out
        self.err = err
        self.terminal = terminal
        self.answer_chars = 0
        self.thinking_chars = 0
        self._thinking_open = False
        self._line_open: TextIO | None = None  # the stream whose last line lacks its newline

    def _write(self, stream: TextIO, text: str) -> None:
        if self._line_open is not None and self._line_open is not stream:
            self._line_open.write("\n")
            self._line_open.flush()
        stream.write(text)
        stream.flush()
        self._line_open = None if text.endswith("\n") else stream

    def thinking(self, text: str) -> None:
        self._thinking_open = True
        self.thinking_chars += len(text)
        if self.terminal:
            # Reset after each piece: a Ctrl-C between two pieces must not leave the terminal dimmed.
            self._write(self.out, DIM + text + RESET)
        else:
            self._write(self.err, text)

    def chunk(self, text: str) -> None:
        if self._thinking_open:
            self._thinking_open = False
            self.end_line()
            if self.terminal:
                self._write(self.out, "\n")
        self.answer_chars += len(text)
        self._write(self.out, text)

    def status(self, text: str) -> None:
        """A line about the answer (notice, outcome, conversation ID) on stderr, on a line of its own."""
        self.end_line()
        self._write(self.err, text + "\n")

    def end_line(self) -> None:
        if self._line_open is not None:
            self._write(self._line_open, "\n")
