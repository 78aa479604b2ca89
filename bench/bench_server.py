"""What the HTTP benchmarks share: a `dlm serve` of their own on a database of their own, and a client
light enough that it measures the server, not itself (one persistent HTTP/1.1 connection, requests
written by hand, responses read by Content-Length)."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_answers(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def dlm_serve(database_url: str, work: str, **settings: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`dlm serve` open on loopback, engines off, storages allowed under ``work``; yields its base URL
    and process. ``settings`` are further DLM_* variables (lower-case names without the prefix).
    With DLM_BENCH_PROFILE set, the server runs under py-spy, which writes its stacks there."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    environment.update(
        DLM_DATABASE_URL=database_url,
        DLM_DATA_DIR=str(Path(work) / "dlm"),
        DLM_PORT=str(port),
        DLM_AUTH="none",
        DLM_STORAGE_ROOTS=work,
        # DLM_BENCH_LOG_LEVEL=INFO shows what the server did (a batch's copies, a pass's plan) and when.
        DLM_LOG_LEVEL=os.environ.get("DLM_BENCH_LOG_LEVEL", "WARNING"),
        DLM_ACCESS_LOG="false",
        DLM_REPLICATION_INTERVAL_SECONDS="0",
        DLM_AUDIT_INTERVAL_SECONDS="0",
        DLM_CAPACITY_INTERVAL_SECONDS="0",
        DLM_EXPIRY_INTERVAL_SECONDS="0",
    )
    environment.update({f"DLM_{name.upper()}": value for name, value in settings.items()})
    command = [sys.executable, "-m", "dlm", "serve"]
    if profile := os.environ.get("DLM_BENCH_PROFILE"):
        # Where the server's time goes: py-spy's collapsed stacks, one file per server started.
        command = ["py-spy", "record", "--rate", "200", "--format", "raw", "--output", f"{profile}.{port}", "--", *command]
    server = subprocess.Popen(command, env=environment)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{base}/health/live", server)
        yield base, server
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


class Connection:
    """One keep-alive HTTP/1.1 connection (asyncio streams); ``request`` returns status and body."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        for _ in range(2):  # the server closes a connection left idle for a few seconds: open another
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            self.writer.write(head.encode() + b"\r\n" + body)
            status_line = await self.reader.readline()
            if status_line:
                break
            self.writer.close()
            self.writer = None
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def call(http: Connection, method: str, path: str, body: object = None, **params: object) -> object:
    """The decoded JSON answer of one API call; anything but a 200 ends the bench with what it said."""
    status, answer = await http.request(
        method, f"{path}?{urlencode(params)}", json.dumps(body).encode() if body else b""
    )
    if status != 200:
        raise SystemExit(f"{path}: {status} {answer[:300]!r}")
    return json.loads(answer)


async def bench_storage(base: str, work: str) -> uuid.UUID:
    """A location and a POSIX storage, both named bench, in ``work``/store; returns the storage's id."""
    root = Path(work) / "store"
    root.mkdir()
    connection = Connection(base)
    await connection.request("POST", "/storage/init_location?location_name=bench&location_type=local-dev")
    status, body = await connection.request(
        "POST",
        "/storage/init_storage?"
        + urlencode(
            {
                "storage_name": "bench",
                "storage_type": "filesystem",
                "storage_interface": "posix",
                "root_directory": str(root),
                "location_name": "bench",
            }
        ),  # fmt: skip
    )
    await connection.close()
    assert status == 200, body
    return uuid.UUID(json.loads(body))


async def timed(call: Callable[[], Awaitable[object]], count: int, *, warm: int = 50) -> list[float]:
    """Milliseconds of each of ``count`` awaits of ``call``, after up to ``warm`` that warm caches and
    prepared statements."""
    for _ in range(min(warm, count)):
        await call()
    took = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        took.append((time.perf_counter() - started) * 1000)
    return took


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
