"""A real highly available PostgreSQL: a pg_auto_failover monitor, a primary and a secondary on
loopback ports, from the distribution's postgresql-15-auto-failover (`.ci/run` installs it)."""

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import free_port

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
# The monitor notices a node that stopped answering within seconds rather than its default half a minute.
FAST_HEALTH_CHECKS = {
    "pgautofailover.health_check_period": "1000",
    "pgautofailover.health_check_timeout": "1000",
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",
    "pgautofailover.node_considered_unhealthy_timeout": "3000",
}


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.monitor_port = free_port()
        self.ports = {"node_1": free_port(), "node_2": free_port()}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # PostgreSQL will not run as root: the nodes run as the distribution's postgres account then.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports.values())
        return f"postgresql://postgres@{hosts}/dlm?target_session_attrs=read-write"

    def autoctl(self, *arguments: str, name: str | None = None) -> subprocess.Popen[bytes] | str:
        # pg_autoctl keeps its state under XDG_DATA_HOME: the postgres account's own, not the test run's.
        command = [
            *self.as_user,
            "env",
            "-u",
            "XDG_DATA_HOME",
            f"PATH={POSTGRES_BIN}:{os.environ['PATH']}",
            "pg_autoctl",
            *arguments,
        ]
        if name is None:
            return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
        log = (self.directory / f"{name}.log").open("w")
        # Each node in a session of its own, so that killing it kills all of it (keeper and postgres).
        return subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)

    async def start(self) -> None:
        monitor = f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover?sslmode=prefer"
        common = ("--auth", "trust", "--no-ssl", "--hostname", "127.0.0.1", "--run")
        self.processes["monitor"] = self.autoctl(  # type: ignore[assignment]
            "create", "monitor", "--pgdata", str(self.directory / "monitor"), "--pgport", str(self.monitor_port),
            *common, name="monitor",
        )  # fmt: skip
        await self._wait(lambda: self._query(self.monitor_port, "pg_auto_failover", "SELECT 1"), "the monitor")
        for setting, value in FAST_HEALTH_CHECKS.items():
            await self._query(self.monitor_port, "pg_auto_failover", f"ALTER SYSTEM SET {setting} = {value}")
        await self._query(self.monitor_port, "pg_auto_failover", "SELECT pg_reload_conf()")
        for name, port in self.ports.items():
            self.processes[name] = self.autoctl(  # type: ignore[assignment]
                "create", "postgres", "--pgdata", str(self.directory / name), "--pgport", str(port),
                "--dbname", "dlm", "--name", name, "--monitor", monitor, *common, name=name,
            )  # fmt: skip
            await self._wait(lambda: self.states(), f"{name} registered", lambda states: name in states)

        async def replicating() -> dict[str, str]:
            # The standby's base backup waits for a checkpoint on the primary: ask for one now.
            await self._query(self.ports["node_1"], "dlm", "CHECKPOINT")
            return await self.states()

        await self.until_healthy(replicating)

    async def until_healthy(self, probe=None) -> None:  # noqa: ANN001
        """Until the monitor hears from a primary and a secondary: synchronous replication is on again.
        Between a failover and this, the new primary runs alone (wait_primary) and acknowledges commits
        before any standby has them; with two data nodes, a second failure then can lose them."""
        await self._wait(
            probe or self.states, "a primary and a secondary", lambda s: sorted(s.values()) == ["primary", "secondary"]
        )

    async def states(self) -> dict[str, str]:
        rows = await self._query(
            self.monitor_port, "pg_auto_failover", "SELECT nodename, reportedstate FROM pgautofailover.node"
        )
        return {row["nodename"]: str(row["reportedstate"]) for row in rows}

    async def primary(self) -> str | None:
        """The node that takes writes now, asked of the nodes themselves (a dead node's last report
        to the monitor still says primary)."""
        for name, port in self.ports.items():
            try:
                rows = await self._query(port, "dlm", "SELECT pg_is_in_recovery() AS standby")
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                continue
            if not rows[0]["standby"]:
                return name
        return None

    def perform_failover(self) -> None:
        self.autoctl("perform", "failover", "--pgdata", str(self.directory / "monitor"))

    def kill(self, name: str) -> None:
        """kill -9 a whole node: its keeper and its postgres."""
        os.killpg(self.processes[name].pid, signal.SIGKILL)

    async def _query(self, port: int, database: str, sql: str) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database=database, timeout=3)
        try:
            return await connection.fetch(sql)
        finally:
            await connection.close()

    async def _wait(self, probe, what: str, ready=bool, seconds: float = 120) -> None:  # noqa: ANN001
        deadline = time.monotonic() + seconds
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = await probe()
                if ready(last):
                    return
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
                last = exc
            await asyncio.sleep(0.5)
        logs = {path.name: path.read_text()[-2000:] for path in self.directory.glob("*.log")}
        raise AssertionError(f"pg_auto_failover: no {what} after {seconds} s ({last!r}); logs: {logs}")

    def stop(self) -> None:
        for process in self.processes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)


@pytest.fixture
async def auto_failover() -> AsyncIterator[Cluster]:
    if shutil.which("pg_autoctl") is None or not (POSTGRES_BIN / "postgres").exists():
        pytest.skip(
            "the failover test needs pg_auto_failover for PostgreSQL 15 "
            "(apt-get install postgresql-15-auto-failover); it is not installed"
        )
    # Not under pytest's own temporary directory: that one is private to the user running the tests.
    directory = Path(tempfile.mkdtemp(prefix="dlm-pg-auto-failover-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    cluster = Cluster(directory)
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
