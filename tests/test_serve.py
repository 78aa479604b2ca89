"""`dlm serve` with nothing configured: the embedded database, a default storage, and a clean stop."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(data_dir: Path, port: int) -> subprocess.Popen[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    environment.update(DLM_DATA_DIR=str(data_dir), DLM_PORT=str(port))
    process = subprocess.Popen(
        [sys.executable, "-m", "dlm", "serve"], env=environment, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise AssertionError("dlm serve did not become ready")


def _dlm(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    environment["DLM_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "dlm", *args], env=environment, capture_output=True, text=True)


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert process.wait(timeout=30) == 0


def _postgres_running(pgdata: Path) -> bool:
    for candidate in psutil.process_iter(["name", "cmdline"]):
        if candidate.info["name"] == "postgres" and str(pgdata) in " ".join(candidate.info["cmdline"] or []):
            return True
    return False


def test_a_newcomer_registers_a_file_with_zero_setup(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "dlm-home", _free_port()
    server = _start(data_dir, port)
    base = f"http://127.0.0.1:{port}"
    try:
        assert server.stderr is not None
        # Said before it serves, so already there: read up to it.
        banner = next(line for line in server.stderr if line.startswith("DLM serving on"))
        assert "operator page at /ui, API docs at /schema" in banner, banner
        (data_dir / "storage" / "hello.txt").write_text("hello, DLM\n")
        response = httpx.post(
            f"{base}/ingest/register_data_item",
            params={"item_name": "hello", "uri": "hello.txt", "storage_name": "local"},
        )
        assert response.status_code == 200, response.text
        uid = response.json()
        [item] = httpx.get(f"{base}/request/query_data_item", params={"item_name": "hello"}).json()
        assert item["uid"] == uid and item["item_state"] == "READY" and item["item_size"] == 11
        history = httpx.get(f"{base}/request/query_item_history", params={"uid": uid}).json()
        assert history[0]["event"] == "created"

        # Workers and `dlm db` attach to the same embedded database without being told where it is.
        worker = _dlm(data_dir, "worker", "expiry", "--once", "--dry-run", "--now", "2999-01-01", "--json")
        assert worker.returncode == 0, worker.stderr
        assert uid in worker.stdout, "the item expires in 2999's eyes, so the dry run names it"
        current = _dlm(data_dir, "db", "current", "--json")
        assert current.returncode == 0 and '"up_to_date":true' in current.stdout, current.stderr
    finally:
        _stop(server)
    assert not _postgres_running(data_dir / "pgdata"), "Ctrl-C stops the embedded database too"

    server = _start(data_dir, port)  # a second start reuses the data
    try:
        rows = httpx.get(f"{base}/request/query_data_item", params={"item_name": "hello"}).json()
        assert [row["uid"] for row in rows] == [uid]
        storages = httpx.get(f"{base}/storage/query_storage").json()
        assert [storage["storage_name"] for storage in storages] == ["local"], "seeding is idempotent"
    finally:
        _stop(server)


def test_sigterm_stops_dlm_and_its_database(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "dlm-home", _free_port()
    server = _start(data_dir, port)
    server.send_signal(signal.SIGTERM)  # what systemd, docker stop and kubectl send
    assert server.wait(timeout=30) == 0
    assert not _postgres_running(data_dir / "pgdata"), "SIGTERM stops the embedded database too"


def test_a_dlm_killed_outright_does_not_keep_the_database_alive_for_good(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "dlm-home", _free_port()
    server = _start(data_dir, port)
    server.kill()  # kill -9: no chance to let go of the database
    server.wait(timeout=30)
    assert _postgres_running(data_dir / "pgdata")
    server = _start(data_dir, port)
    _stop(server)
    assert not _postgres_running(data_dir / "pgdata"), "Ctrl-C of the next DLM stops it"


def test_a_busy_port_is_said_once_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _dlm(tmp_path / "dlm-home", "serve", "--port", str(port))
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"dlm: error: port {port} on 127.0.0.1 is already in use: stop what listens there, or pick --port"
    )
    assert not (tmp_path / "dlm-home" / "pgdata").exists(), "nothing was started"
