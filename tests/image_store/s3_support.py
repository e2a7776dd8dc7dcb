"""A real S3 API server for the tests (moto's standalone server) and a view of stored blobs.

`MotoServer` runs `python -m moto.server` as a subprocess on a free port: the app talks to it
with SigV4 over HTTP exactly as to S3. `BlobView` lets a test look at and tamper with what a
backend stored (a directory tree or a bucket) through one set of methods. In front of moto,
`FaultProxy` answers chosen requests with errors and `StallingProxy` stops moving bytes.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import botocore.config
from aiohttp import web

from tests.ports import free_port, wait_listening

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "retina-test", "AWS_SECRET_ACCESS_KEY": "retina-test-secret"}
REGION = "eu-central-1"


class MotoServer:
    """One moto server process; stop() and start() again on the same port for outage tests."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **CREDENTIALS},
            )
        wait_listening(self.process, self.port, name="moto server", within=30, log=self.log_path)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def client(self, endpoint: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=botocore.config.Config(retries={"max_attempts": 1}),
        )

    def new_bucket(self) -> str:
        name = f"retina-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        return name


@dataclass
class BlobView:
    """What a backend stored: keys are `ab/cd/<sha256>` on either backend."""

    backend: str
    root: Path
    s3: Any = None
    bucket: str = ""
    prefix: str = ""

    def keys(self) -> list[str]:
        if self.backend == "filesystem":
            return sorted(
                str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file() and ".tmp" not in p.parts
            )
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return sorted(item["Key"][len(self.prefix) :] for page in pages for item in page.get("Contents", []))

    def exists(self, key: str) -> bool:
        return key in self.keys()

    def read(self, key: str) -> bytes:
        if self.backend == "filesystem":
            return (self.root / key).read_bytes()
        return self.s3.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        if self.backend == "filesystem":
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            self.s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def remove(self, key: str) -> None:
        if self.backend == "filesystem":
            (self.root / key).unlink()
        else:
            self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def temp_files(self) -> list[Path]:
        """Local scratch left behind (both backends receive uploads into IMAGE_STORAGE_PATH/.tmp)."""
        tmp = self.root / ".tmp"
        return sorted(tmp.iterdir()) if tmp.exists() else []

    def pending_multipart_uploads(self) -> list[str]:
        if self.backend == "filesystem":
            return []
        answer = self.s3.list_multipart_uploads(Bucket=self.bucket)
        return [upload["Key"] for upload in answer.get("Uploads", [])]


def key_of(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


@dataclass
class Fault:
    """Answer matching requests with `status` (or drop the connection when status is 0)."""

    method: str
    path_contains: str = ""
    query_contains: str = ""
    status: int = 503
    times: int = 1_000_000

    def matches(self, request: web.Request) -> bool:
        return (
            self.times > 0
            and request.method == self.method
            and self.path_contains in request.path
            and self.query_contains in request.query_string
        )


_ERROR_CODES = {500: "InternalError", 503: "SlowDown", 502: "BadGateway"}


class FaultProxy:
    """A tiny aiohttp reverse proxy in front of moto that injects 5xx answers and dropped connections.

    It records every request it saw (method, path, query, headers) so tests can count retries
    and check what the backend sent.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def requests(self, method: str, query_contains: str = "") -> list[tuple[str, str, str, dict[str, str]]]:
        return [seen for seen in self.seen if seen[0] == method and query_contains in seen[2]]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.path, request.query_string, dict(request.headers)))
        for fault in self.faults:
            if fault.matches(request):
                fault.times -= 1
                if fault.status == 0:
                    if request.transport is not None:
                        request.transport.close()
                    return web.Response(status=500)
                code = _ERROR_CODES.get(fault.status, "ServiceUnavailable")
                xml = f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
                return web.Response(status=fault.status, text=xml, content_type="application/xml")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=io.BytesIO(body),
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            drop = ("content-length", "transfer-encoding")
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in drop}
            return web.Response(status=upstream.status, body=payload, headers=out)


class StallingProxy:
    """A TCP proxy in front of moto that can stop making progress, as a partition or a wedged load
    balancer does: `stall()` and it still accepts connections and keeps every one open, but moves
    no byte in either direction (what it has not read stays in the kernel's buffers) until
    `resume()`. It runs on its own thread and event loop, so it keeps working while a test blocks
    its own loop (a sync readiness wait, a subprocess)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stalling-proxy", daemon=True)
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stall(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set_flowing(False), self._loop).result(timeout=10)

    def resume(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set_flowing(True), self._loop).result(timeout=10)

    def close(self) -> None:
        """Drop every connection (bytes held back are never delivered) and stop the thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        accepting = asyncio.current_task()
        if accepting is not None:  # cancelled by close() if it is still waiting for the stall to end
            self._pumps.add(accepting)
            accepting.add_done_callback(self._pumps.discard)
        assert self._flowing is not None
        try:
            await self._flowing.wait()  # a stalled proxy accepts, but does not even connect onwards
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except (OSError, asyncio.CancelledError):  # asyncio logs a cancelled connection handler as an error
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(source, sink))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await source.read(64 * 1024)
                await self._flowing.wait()  # a stall that began during the read holds these bytes
                if not data:
                    break
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in list(self._writers):
            writer.transport.abort()
