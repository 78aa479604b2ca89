"""Copy throughput: DLM's migration (copy_data_item, end to end: queue, stream, fsync/multipart, read
back and verify the checksum, mark READY) against `cp` and `rclone copy` on the same payloads, in the
same run. Two payloads: one large file, and a container of many small files; two directions:
POSIX→POSIX and POSIX→S3.

    sudo apt-get install rclone          # Debian's package; the rclone column is skipped without it
    python bench/copy_throughput.py [--size-mib 1024] [--files 10000] [--file-kib 4] [--rounds 1]

The database is DLM_BENCH_DATABASE_URL, else DLM_TEST_DATABASE_URL, else the local PostgreSQL. The S3
endpoint is DLM_BENCH_S3_ENDPOINT (with DLM_BENCH_S3_KEY / DLM_BENCH_S3_SECRET), else a moto server
started here: moto keeps objects in memory and is far slower than a real object store, so the POSIX→S3
rows compare tools against one another, not against what MinIO or Ceph would sustain.

What differs between the tools, and is not hidden: DLM makes every file durable (fsync, or one syncfs
per batch of small files) and reads every file back from the destination to verify its checksum;
`cp` does neither (`cp -r && sync` is cp made durable, the fair baseline for DLM on POSIX); rclone
checks sizes, and MD5 on S3 uploads. Each tool starts with nothing left to write back (a sync before
it), and each round runs the tools in another order.
"""

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aioboto3
import bench_db  # the benches' shared database helpers, beside this script
from bench_server import Connection, call, dlm_serve, free_port

MIB = 1024 * 1024


class S3:
    """An S3 endpoint for the run: the one named by the environment, or a moto server of our own."""

    def __init__(self) -> None:
        self.server: subprocess.Popen[bytes] | None = None
        self.endpoint = os.environ.get("DLM_BENCH_S3_ENDPOINT", "")
        self.key = os.environ.get("DLM_BENCH_S3_KEY", "bench")
        self.secret = os.environ.get("DLM_BENCH_S3_SECRET", "bench-secret")
        if not self.endpoint:
            port = free_port()
            self.server = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.endpoint = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "type": "s3",
            "provider": "Other",
            "endpoint": self.endpoint,
            "access_key_id": self.key,
            "secret_access_key": self.secret,
            "region": "us-east-1",
        }

    def rclone_environment(self) -> dict[str, str]:
        # rclone refuses a custom CA bundle for plain-HTTP endpoints; it has no use for one here.
        inherited = {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}
        return {
            **inherited,
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": self.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.secret,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
        }

    async def new_bucket(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        async with self._client() as s3:
            await s3.create_bucket(Bucket=name)
        return name

    async def drop_bucket(self, name: str) -> None:
        async with self._client() as s3:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=name):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    await s3.delete_objects(Bucket=name, Delete={"Objects": keys})
            await s3.delete_bucket(Bucket=name)

    def _client(self) -> Any:
        return aioboto3.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=10)


async def dlm_copy(admin_url: str, work: Path, uri: str, kind: str, destination: str, s3: S3 | None) -> float:
    """Seconds from copy_data_item to a verified READY replica, in a `dlm serve` of its own."""
    url = await bench_db.fresh_database(admin_url)
    try:
        settings = {"migration_workers": "1", "migration_poll_seconds": "0.05"}
        with dlm_serve(url, str(work), **settings) as (base, _):
            http = Connection(base)
            await call(http, "POST", "/storage/init_location", location_name="bench", location_type="local-dev")
            common = {"location_name": "bench", "storage_name": "destination", "root_directory": destination}
            await call(
                http, "POST", "/storage/init_storage", storage_name="source", storage_type="filesystem",
                storage_interface="posix", root_directory=str(work / "source"), location_name="bench",
            )  # fmt: skip
            if kind == "s3" and s3 is not None:
                await call(
                    http, "POST", "/storage/init_storage", s3.config, storage_type="objectstore",
                    storage_interface="s3", **common,
                )  # fmt: skip
            else:
                await call(
                    http, "POST", "/storage/init_storage", storage_type="filesystem", storage_interface="posix",
                    **common,
                )  # fmt: skip
            item_type = "container" if (work / "source" / uri).is_dir() else "file"
            uid = await call(
                http, "POST", "/ingest/register_data_item", item_name="payload", uri=uri, storage_name="source",
                item_type=item_type,
            )  # fmt: skip
            started = time.perf_counter()
            queued: Any = await call(http, "POST", "/migration/copy_data_item", uid=uid, destination_name="destination")
            while True:
                rows: Any = await call(http, "GET", "/migration/get_migration", migration_id=queued["migration_id"])
                row = rows[0]
                if row["status"] not in ("PENDING", "RUNNING"):
                    break
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            await http.close()
            if row["status"] != "SUCCEEDED":
                raise RuntimeError(f"DLM copy {row['status']}: {row['last_error']}")
            return elapsed
    finally:
        await bench_db.drop_database(admin_url, url)


def _timed(command: list[str], environment: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


async def run_case(
    kind: str, source: Path, uri: str, rounds: int, admin_url: str, s3: S3 | None, scratch: Path
) -> dict[str, float]:
    """Median seconds per tool for one payload and direction; every run gets a fresh destination."""

    async def fresh_destination() -> str:
        if kind == "s3" and s3 is not None:
            return await s3.new_bucket()
        path = scratch / f"dest-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return str(path)

    async def clean(destination: str) -> None:
        if kind == "s3" and s3 is not None:
            await s3.drop_bucket(destination)
        else:
            shutil.rmtree(destination)

    tools: dict[str, Callable[[str], Awaitable[float]]] = {}
    if kind == "posix":

        async def cp(destination: str) -> float:
            return await asyncio.to_thread(_timed, ["cp", "-r", str(source / uri), destination])

        async def cp_durably(destination: str) -> float:
            # What DLM promises and cp does not: the bytes are on disk when it returns.
            command = f"cp -r {shlex.quote(str(source / uri))} {shlex.quote(destination)} && sync"
            return await asyncio.to_thread(_timed, ["sh", "-c", command])

        tools["cp -r"] = cp
        tools["cp -r && sync"] = cp_durably
    if shutil.which("rclone"):

        async def rclone(destination: str) -> float:
            target = f"bench:{destination}/{uri}" if kind == "s3" else f"{destination}/{uri}"
            command = ["rclone", "copy", "--config", "/dev/null", str(source / uri)]
            if (source / uri).is_file():
                command = ["rclone", "copyto", "--config", "/dev/null", str(source / uri)]
            environment = s3.rclone_environment() if kind == "s3" and s3 else None
            return await asyncio.to_thread(_timed, [*command, target], environment)

        tools["rclone copy"] = rclone

    async def dlm(destination: str) -> float:
        return await dlm_copy(admin_url, scratch, uri, kind, destination, s3)

    tools["DLM copy_data_item"] = dlm
    results: dict[str, list[float]] = {name: [] for name in tools}
    # Destinations are removed at the end, not after each tool: ext4 skips recently deleted inodes when
    # it allocates new ones (minutes), so the tool after a removal of 10 k files would pay for it.
    destinations = []
    try:
        for _ in range(rounds):
            for name, tool in tools.items():
                destinations.append(await fresh_destination())
                results[name].append(await tool(destinations[-1]))
    finally:
        for destination in destinations:
            await clean(destination)
    return {name: statistics.median(times) for name, times in results.items()}


def _make_payloads(root: Path, size_mib: int, files: int, file_kib: int) -> tuple[int, int]:
    big = root / "big.bin"
    with big.open("wb") as stream:
        block = os.urandom(MIB)
        for index in range(size_mib):
            stream.write(block[index % 251 :] + block[: index % 251])  # not all blocks alike
    small = root / "small"
    small.mkdir()
    for index in range(files):
        directory = small / f"d{index // 1000:03d}"
        directory.mkdir(exist_ok=True)
        (directory / f"f{index:05d}.dat").write_bytes(os.urandom(file_kib * 1024))
    return size_mib * MIB, files * file_kib * 1024


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the large file")
    parser.add_argument("--files", type=int, default=10_000, help="number of small files in the container")
    parser.add_argument("--file-kib", type=int, default=4, help="size of each small file")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--skip-s3", action="store_true")
    args = parser.parse_args()
    admin_url = bench_db.admin_url()
    s3 = S3() if not args.skip_s3 else None
    try:
        with tempfile.TemporaryDirectory(prefix="dlm-bench-copy-", dir=os.environ.get("DLM_BENCH_DIR")) as directory:
            root = Path(directory)
            source = root / "source"
            source.mkdir()
            big_bytes, small_bytes = _make_payloads(source, args.size_mib, args.files, args.file_kib)
            cases = [
                (f"1 file of {args.size_mib} MiB", "big.bin", big_bytes),
                (f"{args.files:,} files of {args.file_kib} KiB", "small", small_bytes),
            ]
            kinds = ["posix"] + ([] if args.skip_s3 else ["s3"])
            rows = []
            for label, uri, size in cases:
                for kind in kinds:
                    print(f"running: {label}, POSIX→{kind.upper()}", file=sys.stderr)
                    timings = await run_case(kind, source, uri, args.rounds, admin_url, s3, root)
                    baseline = timings.get("cp -r") or timings.get("rclone copy")
                    for tool, seconds in timings.items():
                        rows.append((label, f"POSIX→{kind.upper()}", tool, seconds, size, seconds / baseline))
    finally:
        if s3 is not None:
            s3.close()
    print(f"\nCopy throughput (median of {args.rounds} round(s)); ratio = seconds / first baseline of the row group\n")
    print(f"| {'payload':<24} | {'direction':<11} | {'tool':<20} | {'seconds':>8} | {'MiB/s':>8} | {'ratio':>6} |")
    print(f"|{'-' * 26}|{'-' * 13}|{'-' * 22}|{'-' * 10}|{'-' * 10}|{'-' * 8}|")
    for label, direction, tool, seconds, size, ratio in rows:
        speed = size / MIB / seconds
        print(f"| {label:<24} | {direction:<11} | {tool:<20} | {seconds:8.2f} | {speed:8.1f} | {ratio:5.2f}x |")


if __name__ == "__main__":
    asyncio.run(main())
