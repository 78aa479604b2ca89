"""CLI start-up: the CPU one `dlm request query --json` costs against a running DLM, beside a bare
Python start and `curl` asking the same server the same thing, in the same run.

    python bench/cli_startup.py [--runs 10]

The goal is at most 0.3 s of CPU per call: the CLI imports only what talking HTTP needs (no SQLAlchemy,
no S3 stack, no HTTP library beyond the standard one). The database is DLM_BENCH_DATABASE_URL, else
DLM_TEST_DATABASE_URL, else the local PostgreSQL.
"""

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import bench_db  # the benches' shared database helpers, beside this script
from bench_server import free_port


def _cpu_of(command: list[str], environment: dict[str, str]) -> float:
    """User + system seconds of one run of ``command`` (a child process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    arguments = parser.parse_args()

    admin = bench_db.admin_url()
    url = asyncio.run(bench_db.fresh_database(admin))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    with tempfile.TemporaryDirectory() as data_dir:
        server_environment = {**environment, "DLM_DATABASE_URL": url, "DLM_DATA_DIR": data_dir, "DLM_PORT": str(port)}
        server = subprocess.Popen(
            [sys.executable, "-m", "dlm", "serve"], env=server_environment, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{base}/health/ready", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("dlm serve did not start") from None
                    time.sleep(0.2)
            client_environment = {**environment, "DLM_URL": base}
            dlm = shutil.which("dlm") or "dlm"
            cases = [
                ("python -c pass (baseline)", [sys.executable, "-c", "pass"]),
                ("dlm request query --json", [dlm, "request", "query", "--json"]),
            ]
            if curl := shutil.which("curl"):
                cases.insert(1, ("curl, the same request", [curl, "-s", f"{base}/request/query_data_item"]))
            print(f"| command                      | CPU s (median of {arguments.runs}) |")
            print("|------------------------------|-----------------------|")
            for name, command in cases:
                samples = [_cpu_of(command, client_environment) for _ in range(arguments.runs)]
                print(f"| {name:<28} | {statistics.median(samples):>21.3f} |")
        finally:
            server.terminate()
            server.wait(timeout=30)
            asyncio.run(bench_db.drop_database(admin, url))


if __name__ == "__main__":
    main()
