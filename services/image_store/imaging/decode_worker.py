"""What runs inside each decode worker process: its limits, and its tie to the server process.

A worker must never outlive the server. After a `kill -9` of the server, workers blocked on
their task pipe (or busy decoding a bomb) used to run on for minutes and even wrote temp files
after the restart. Three independent guards:
- Linux: PR_SET_PDEATHSIG makes the kernel SIGKILL the worker when its parent dies;
- everywhere: a daemon thread polls the parent pid and exits when it changes;
- RLIMIT_CPU per task: a decode that spins past its CPU allowance is killed by the kernel even
  if nobody is left to enforce the wall-clock timeout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Final

from PIL import Image, ImageFile

from services.image_store.imaging.pipeline import ProcessedImage, ValidationLimits, process_image_file, warm_up

PR_SET_PDEATHSIG: Final = 1
PARENT_POLL_SECONDS: Final = 0.5


def init_worker(parent_pid: int, memory_limit_bytes: int, pillow_max_pixels: int) -> None:
    """Runs once in each new worker process (pebble's initializer), before any task."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    if memory_limit_bytes > 0:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory_limit_bytes if hard == resource.RLIM_INFINITY else min(memory_limit_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    Image.MAX_IMAGE_PIXELS = pillow_max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    warm_up()  # libmagic and Pillow's plugins load now, not during the first upload's time limit


def decode_task(source: Path, destination: Path, limits: ValidationLimits, cpu_seconds: float) -> ProcessedImage:
    """process_image_file under a CPU allowance of its own (RLIMIT_CPU counts the process's whole
    life, so the soft limit is moved to what this worker has used so far plus the allowance)."""
    _limit_cpu_from_now(cpu_seconds)
    return process_image_file(source, destination, limits)


def _limit_cpu_from_now(cpu_seconds: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(used + cpu_seconds)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before prctl took effect; and other systems have no prctl.
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)  # orphaned: re-parented to init (or a subreaper); no cleanup, no more writes
