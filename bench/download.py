"""Download throughput: DLM's GET /request/retrieve (a 1 GiB POSIX payload, streamed by `dlm serve`
over HTTP on loopback) against reading the same file (`cat > /dev/null`) and against `curl` from a
plain static file server (`python -m http.server`) in the same run; and a container streamed as a tar
against `tar -c | cat`. The server's peak RSS is reported beside: it must not grow with the payload.

    python bench/download.py [--size-mib 1024] [--files 2000] [--file-kib 64] [--rounds 3]

The database is DLM_BENCH_DATABASE_URL, else DLM_TEST_DATABASE_URL, else the local PostgreSQL. Goal:
DLM at 0.8× the static server or better. What differs and is not hidden: DLM looks the item up in its
database, checks the caller may read it and records the retrieval in the item's history before the
first byte; the static server does none of that.
"""

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_db  # the benches' shared database helpers, beside this script
from bench_server import dlm_serve, free_port, peak_rss_mib, wait_until_answers

MIB = 1024 * 1024


def timed(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--file-kib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed (apt-get install curl)")
    admin = bench_db.admin_url()
    url = asyncio.run(bench_db.fresh_database(admin))
    with tempfile.TemporaryDirectory(prefix="dlm-bench-download-") as work:
        root = Path(work) / "store"
        (root / "box").mkdir(parents=True)
        big = root / "big.dat"
        block = os.urandom(MIB)
        with open(big, "wb") as stream:
            for _ in range(options.size_mib):
                stream.write(block)
        small = os.urandom(options.file_kib * 1024)
        for index in range(options.files):
            (root / "box" / f"f{index:05d}.dat").write_bytes(small)

        static_port = free_port()
        static = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1", "--directory", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with dlm_serve(url, work, access_log="true") as (base, server):
                wait_until_answers(f"http://127.0.0.1:{static_port}/", static)
                download(options, root, big, base, server, static_port)
        finally:
            static.send_signal(signal.SIGINT)
            static.wait(timeout=30)
            asyncio.run(bench_db.drop_database(admin, url))


def download(
    options: argparse.Namespace, root: Path, big: Path, base: str, server: subprocess.Popen[bytes], static_port: int
) -> None:
    for target in (
        "/storage/init_location?location_name=bench&location_type=local-dev",
        "/storage/init_storage?storage_name=bench&storage_type=filesystem&storage_interface=posix"
        f"&root_directory={root}&location_name=bench",
        "/ingest/register_data_item?item_name=big&uri=big.dat&storage_name=bench",
        "/ingest/register_data_item?item_name=box&uri=box&item_type=container&storage_name=bench",
    ):
        subprocess.run(f"curl -sf -X POST '{base}{target}'", shell=True, check=True, stdout=subprocess.DEVNULL)
    runs: dict[str, list[float]] = {}
    for _ in range(options.rounds):
        for name, command in (
            ("cat > /dev/null", f"cat {big} > /dev/null"),
            ("curl, python -m http.server", f"curl -sf -o /dev/null http://127.0.0.1:{static_port}/big.dat"),
            ("curl, DLM retrieve", f"curl -sf -o /dev/null '{base}/request/retrieve?item_name=big'"),
            ("tar -c | cat (container)", f"tar -C {root} -cf - box | cat > /dev/null"),
            (
                "curl, DLM retrieve (container as tar)",
                f"curl -sf -o /dev/null '{base}/request/retrieve?item_name=box'",
            ),
        ):
            runs.setdefault(name, []).append(timed(command))
    sizes = {"container": options.files * options.file_kib * 1024, "file": options.size_mib * MIB}
    print(f"{'':40} {'MiB/s':>10} {'seconds':>9}   (median of {options.rounds})")
    for name, seconds in runs.items():
        size = sizes["container"] if "container" in name else sizes["file"]
        median = statistics.median(seconds)
        print(f"{name:40} {size / MIB / median:10.0f} {median:9.2f}")
    ratio = statistics.median(runs["curl, python -m http.server"]) / statistics.median(runs["curl, DLM retrieve"])
    print(f"\nDLM / static server: {ratio:.2f}× (goal ≥ 0.8×)")
    print(f"dlm serve peak RSS: {peak_rss_mib(server.pid):.0f} MiB after {options.rounds * 2} downloads")


if __name__ == "__main__":
    main()
