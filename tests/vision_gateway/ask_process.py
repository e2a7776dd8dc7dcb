"""`retina ask` as a user runs it: a child process on real pseudo-terminals.

stdout (and stdin, the controlling terminal) is one pty and stderr another, so the child sees two
terminals (progress bar, dimmed thinking) and the test can still tell the answer from the rest.
Ctrl-C is the byte 0x03 written to the terminal: the line discipline turns it into SIGINT for the
child's foreground process group, exactly as a keyboard does. The test's event loop keeps running
(the stack under test lives in it), so waiting is done with asyncio.sleep, never by blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from tests.conftest import ROOT

ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


def ask_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """A minimal environment: nothing retina reads leaks in from the test runner's."""
    env = {key: os.environ[key] for key in ENV_PASSTHROUGH if key in os.environ}
    env.update(PYTHONPATH=str(ROOT), RETINA_STATE_DIR=str(state_dir), TERM="xterm", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _take_controlling_terminal() -> None:
    """In the child, after setsid: make stdin's pty the controlling terminal, so ^C means SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _Reader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            self.data += chunk

    def join(self) -> None:
        self._thread.join(5)

    @property
    def text(self) -> str:
        # The terminal turns "\n" into "\r\n" (ONLCR); tests compare text as the program wrote it.
        return self.data.decode("utf-8", "replace").replace("\r\n", "\n")


class AskProcess:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        out_master, out_slave = os.openpty()
        err_master, err_slave = os.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "ask", *args],
            cwd=ROOT,
            env=env,
            stdin=out_slave,
            stdout=out_slave,
            stderr=err_slave,
            start_new_session=True,
            preexec_fn=_take_controlling_terminal,
        )
        os.close(out_slave)
        os.close(err_slave)
        self._terminal = out_master
        self.out = _Reader(out_master)
        self.err = _Reader(err_master)

    def ctrl_c(self) -> None:
        os.write(self._terminal, b"\x03")

    async def wait_for(self, text: str, *, stream: str = "out", timeout: float = 20.0) -> None:  # noqa: ASYNC109
        reader = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        while text not in reader.text:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on {stream} within {timeout}s\n{self.describe()}")
            if self.process.poll() is not None:
                deadline = min(deadline, time.monotonic() + 0.5)  # the readers may still be catching up
            await asyncio.sleep(0.02)

    async def wait(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"retina ask did not exit within {timeout}s\n{self.describe()}")
            await asyncio.sleep(0.05)
        self.out.join()
        self.err.join()
        return code

    def describe(self) -> str:
        return f"--- stdout ---\n{self.out.text}\n--- stderr ---\n{self.err.text}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for fd in (self.out.fd, self.err.fd):
            with contextlib.suppress(OSError):
                os.close(fd)


async def run_piped(
    args: list[str],
    env: dict[str, str],
    timeout: float = 30.0,  # noqa: ASYNC109
    cwd: Path = ROOT,
) -> tuple[int, str, str]:
    """`retina ask` with stdout and stderr redirected (not terminals), without blocking the event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "ask",
        *args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
