"""The decode worker's own limits, in real processes: a CPU allowance per task, and exit when
the process that started it dies (the pool-level kill -9 test is test_orphan_workers.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from services.image_store.imaging.decode_worker import _limit_cpu_from_now, _watch_parent


def _spin_after_limit(cpu_seconds: float) -> None:
    time.sleep(0.2)  # time asleep is not CPU time: the allowance counts from the limit on
    _limit_cpu_from_now(cpu_seconds)
    while True:
        pass


def test_a_spinning_task_is_killed_by_its_cpu_allowance() -> None:
    process = multiprocessing.get_context("spawn").Process(target=_spin_after_limit, args=(1,))
    started = time.monotonic()
    process.start()
    process.join(15)
    if process.is_alive():
        process.kill()
    assert process.exitcode == -signal.SIGXCPU, f"exit code {process.exitcode}"
    assert time.monotonic() - started < 10


def _start_watched_grandchild(pid_pipe: multiprocessing.connection.Connection) -> None:
    child = multiprocessing.get_context("spawn").Process(target=_watched, args=(os.getpid(),))
    child.start()
    pid_pipe.send(child.pid)
    os._exit(0)  # the middle process dies without waiting: its child is orphaned


def _watched(parent_pid: int) -> None:
    _watch_parent(parent_pid)  # the portable fallback alone (no prctl)


def test_the_parent_watchdog_ends_an_orphaned_worker() -> None:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    middle = context.Process(target=_start_watched_grandchild, args=(sender,))
    middle.start()
    grandchild = receiver.recv()
    middle.join(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild, signal.SIGKILL)
        raise AssertionError("the orphaned worker kept running")
