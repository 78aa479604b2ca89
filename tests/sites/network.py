"""Two sites in network namespaces, joined by one shaped veth pair: what tests/sites/test_two_sites.py
and bench/site_link.py build. Needs root, iproute2 (`ip`, `tc`) and moto."""

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import _asyncpg_dsn, dlm_environment, free_port

ADMIN = "dlm_" + secrets.token_hex(32)
DEFAULT_RATE = "200mbit"
SITES = {"perth": ("a", "10.253.0.1", "10.253.1"), "cape": ("b", "10.253.0.2", "10.253.2")}


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


class Network:
    """Namespaces ``<tag>a`` and ``<tag>b`` joined by veth ``wan`` (shaped), each also joined to the
    test's own namespace by a hub veth (``<site net>.1`` here, ``.2`` there)."""

    def __init__(self, rate: str = DEFAULT_RATE) -> None:
        self.rate = rate
        self.tag = f"dlm{os.getpid() % 100000}"
        self.namespaces = {site: f"{self.tag}{letter}" for site, (letter, _, _) in SITES.items()}

    def build(self) -> None:
        a, b = self.namespaces["perth"], self.namespaces["cape"]
        for namespace in (a, b):
            _run("ip", "netns", "add", namespace)
            _run("ip", "-n", namespace, "link", "set", "lo", "up")
        _run("ip", "link", "add", "wan", "netns", a, "type", "veth", "peer", "name", "wan", "netns", b)
        for site, (letter, address, hub) in SITES.items():
            namespace = self.namespaces[site]
            _run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "wan")
            _run("ip", "-n", namespace, "link", "set", "wan", "up")
            # Every byte a site sends over the link waits its turn at the rate.
            _run("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", "wan", "root", "tbf",
                 "rate", self.rate, "burst", "256kb", "latency", "100ms")  # fmt: skip
            here = f"{self.tag}{letter}h"
            _run("ip", "link", "add", here, "type", "veth", "peer", "name", "hub", "netns", namespace)
            _run("ip", "addr", "add", f"{hub}.1/24", "dev", here)
            _run("ip", "link", "set", here, "up")
            _run("ip", "-n", namespace, "addr", "add", f"{hub}.2/24", "dev", "hub")
            _run("ip", "-n", namespace, "link", "set", "hub", "up")

    def link_bytes(self) -> int:
        """Bytes that crossed the link so far, both ways, as site perth's end counts them."""
        [device] = json.loads(_run("ip", "-n", self.namespaces["perth"], "-j", "-s", "link", "show", "dev", "wan"))
        return device["stats64"]["rx"]["bytes"] + device["stats64"]["tx"]["bytes"]

    def teardown(self) -> None:
        for namespace in self.namespaces.values():
            with contextlib.suppress(RuntimeError):
                _run("ip", "netns", "del", namespace)


def network_or_skip(rate: str = DEFAULT_RATE) -> Network:
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the two-site test needs iproute2 ({', '.join(missing)} not found)")
    if os.geteuid() != 0:
        pytest.skip("the two-site test makes network namespaces, which needs root")
    network = Network(rate)
    try:
        network.build()
    except RuntimeError as exc:
        network.teardown()
        pytest.skip(f"the two-site test could not make its network namespaces: {exc}")
    return network


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def database_hub(database_url: str) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """The test database, reachable from each site's hub address on one port (a TCP relay here)."""
    target = _asyncpg_dsn(database_url)
    host, port = target["host"] or "127.0.0.1", target["port"] or 5432

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if host.startswith("/"):
            server_reader, server_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            server_reader, server_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(_forward(client_reader, server_writer), _forward(server_reader, client_writer))

    listen = free_port()
    servers = [await asyncio.start_server(relay, f"{hub}.1", listen) for _, _, hub in SITES.values()]
    try:
        yield listen, target
    finally:
        for server in servers:
            server.close()


class Site:
    """One site's processes, each run in its namespace."""

    def __init__(self, name: str, network: Network, root: Path, database: str, secret: str) -> None:
        self.name, self.network, self.root = name, network, root
        _, self.address, hub = SITES[name]
        self.hub = f"{hub}.2"
        self.namespace = network.namespaces[name]
        self.environment = {
            **dlm_environment(database, root / f"dlm-{name}", storage_roots=str(root)),
            "DLM_SECRET_KEY": secret,
            "DLM_ADMIN_TOKEN": ADMIN,
            "DLM_ALLOWED_HOSTS": "*",
            "DLM_MIGRATION_LEASE_SECONDS": "4",
            "DLM_MIGRATION_RETRY_BASE_SECONDS": "1",
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, key: str, *command: str, **environment: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{self.name}-{key}.log").open("wb")
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, *command],
            env={**self.environment, **environment},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[key] = process
        return process

    def log(self, key: str) -> str:
        return (self.root / f"{self.name}-{key}.log").read_text(errors="replace")[-3000:]

    async def stop(self) -> None:
        """Stop every process, waiting without blocking the event loop: their shutdown reaches the
        database through database_hub's relay, which runs on it."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(process.poll() is None for process in self.processes.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


async def until(probe: Any, what: Any, seconds: float = 60) -> Any:
    """What ``probe`` returns once it is something; ``what`` (text, or a function giving it) says what
    did not happen in time."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(httpx.TransportError):
            if found := await probe():
                return found
        assert time.monotonic() < deadline, what() if callable(what) else what
        await asyncio.sleep(0.2)
