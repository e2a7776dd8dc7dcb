"""Writing the bytes to store: durably (fsync), hashed on the way, and never left half-written."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Final

COPY_BLOCK_BYTES: Final = 1024 * 1024
OUTPUT_FILE_MODE: Final = 0o640


def blocks(stream: IO[bytes]) -> Iterator[bytes]:
    while block := stream.read(COPY_BLOCK_BYTES):
        yield block


def write_durably(destination: Path, chunks: Iterable[bytes | memoryview]) -> tuple[str, int, float]:
    """Write, flush and fsync; returns (sha256 hex, size, seconds spent hashing).

    A failed write removes the partial file, so a rejection or an error leaves nothing behind.
    """
    digest = hashlib.sha256()
    size = 0
    hashing = 0.0
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, OUTPUT_FILE_MODE)
    try:
        out = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        destination.unlink()
        raise
    try:
        with out:
            for chunk in chunks:
                started = time.perf_counter()
                digest.update(chunk)
                hashing += time.perf_counter() - started
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            destination.unlink()
        raise
    return digest.hexdigest(), size, hashing
