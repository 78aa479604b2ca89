"""The README runs: every shell and Python example, in order, against a `dlm serve` started the way
the README starts it (embedded database, nothing configured), so the README can never drift again.

Only what cannot run inside a test is adapted, in one place here: the README's port and MinIO's become
the test's own (its bucket made beforehand), example.org names become this machine, and every `curl`
fails the run on an error answer (the README's curl would just print it)."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import S3_CREDENTIALS, free_port, new_bucket

ROOT = Path(__file__).parent.parent
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
PRELUDE = """set -euo pipefail
curl() { local status=0; command curl --fail-with-body --silent --show-error "$@" || status=$?; echo; return $status; }
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
"""


def _blocks(section_from: str, section_to: str) -> Iterator[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    part = text[text.index(section_from) : text.index(section_to)]
    for language, code in BLOCK.findall(part):
        if not code.startswith("pip install"):  # the two commands that install DLM and run these tests
            yield language, code


def _script(blocks: Iterator[tuple[str, str]], replacements: dict[str, str]) -> str:
    lines = [PRELUDE]
    for language, code in blocks:
        for old, new in replacements.items():
            code = code.replace(old, new)
        if language == "python":
            code = f"{sys.executable} - <<'PYTHON'\n{code}PYTHON\n"
        lines.append(code)
    return "\n".join(lines)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, f"dlm serve stopped: {log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(f"{url}/health/ready", timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("dlm serve did not become ready")


def _run(script: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], env=environment, capture_output=True, text=True, timeout=600)


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A newcomer's environment: a home of their own, nothing of DLM's configured, `dlm` on the PATH."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("DLM_", "XDG_"))}
    environment["HOME"] = str(tmp_path)
    environment["PATH"] = f"{Path(sys.executable).parent}:{environment['PATH']}"
    return environment


async def test_every_readme_example_runs_in_order(
    home: dict[str, str], s3_endpoint: str, database_url: str, tmp_path: Path
) -> None:
    await new_bucket({"endpoint": s3_endpoint, **S3_CREDENTIALS}, name="my-bucket")
    port = free_port()
    replacements = {"127.0.0.1:8000": f"127.0.0.1:{port}", "http://127.0.0.1:9000": s3_endpoint}
    # `pip install . && dlm serve`, as the README says, with engines passing often enough for a test.
    serving = {**home, "DLM_PORT": str(port), "DLM_REPLICATION_INTERVAL_SECONDS": "2"}
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "dlm", "serve"], env=serving, stderr=stderr)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", server, log)
        local = _script(_blocks("## First steps", "## Deploying it"), replacements)
        result = _run(local, {**home, "DLM_URL": f"http://127.0.0.1:{port}"})
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert "SUCCEEDED" in result.stdout, "the Python example copied its file"
        assert "run-1/a.dat" in result.stdout, "the container's members are listed"
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)

    # "Deploying it": your own PostgreSQL, a token, DLM on every interface.
    port = free_port()
    deployed = _script(
        _blocks("## Deploying it", "| variable | default | meaning |"),
        {
            "postgresql://dlm@db.example.org:5432/dlm": database_url,
            "dlm.example.org:8000": f"localhost:{port}",
            "dlm.example.org": "localhost",
            "dlm serve --host 0.0.0.0 &": (
                f"dlm serve --host 0.0.0.0 --port {port} &\n"
                f"until curl http://127.0.0.1:{port}/health/ready >/dev/null 2>&1; do sleep 0.3; done"
            ),
        },
    )
    result = _run(deployed, home)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "ops" in result.stdout and "admin" in result.stdout, "whoami: the admin token's holder"
    assert "pipeline-7" in result.stdout
