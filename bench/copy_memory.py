"""Server memory during big copies between POSIX and S3: `dlm serve`'s resident set sampled while it
copies large files both ways, beside its resident set at rest and rclone's peak for the same copy:

    python bench/copy_memory.py [--size-mib 2048] [--copies 2]

``--copies`` files are copied at once (DLM_MIGRATION_WORKERS is set to that), first POSIX→S3, then
back S3→POSIX. The peak is the kernel's high-water mark (VmHWM), reset before each direction. The S3
endpoint is a moto server of its own (objects in moto's memory, not DLM's) or DLM_BENCH_S3_ENDPOINT.
Goal (issue 16): under 200 MB whatever the size.
"""

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

import bench_db  # the benches' shared database helpers, beside this script
from bench_server import Connection, call, dlm_serve, peak_rss_mib
from copy_throughput import S3

MIB = 1024 * 1024


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak resident set (VmHWM)


async def copy_all(http: Connection, uids: list[str], destination: str, pid: int) -> tuple[float, float, list[str]]:
    """Queue a copy of each uid at once; wait, sampling; seconds, peak MiB, the new replicas' uids."""
    reset_peak(pid)
    started = time.perf_counter()
    queued = [
        await call(http, "POST", "/migration/copy_data_item", uid=uid, destination_name=destination) for uid in uids
    ]
    pending = {entry["migration_id"]: entry for entry in queued}  # type: ignore[index]
    copies = []
    while pending:
        await asyncio.sleep(0.1)
        for migration_id in list(pending):
            [row] = await call(http, "GET", "/migration/get_migration", migration_id=migration_id)  # type: ignore[misc]
            if row["status"] not in ("PENDING", "RUNNING"):
                if row["status"] != "SUCCEEDED":
                    raise SystemExit(f"copy {migration_id} {row['status']}: {row['last_error']}")
                copies.append(row["destination_uid"])
                del pending[migration_id]
    return time.perf_counter() - started, peak_rss_mib(pid), copies


def rclone_peak_mib(source: Path, s3: S3, bucket: str) -> float | None:
    """rclone's own peak resident set for the same upload (from the kernel's accounting of the child)."""
    try:
        process = subprocess.Popen(
            ["rclone", "copyto", str(source), f"bench:{bucket}/rclone-copy"],
            env=s3.rclone_environment(),
        )
    except FileNotFoundError:
        return None
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"rclone failed: {process.returncode}")
    return usage.ru_maxrss / 1024


async def run(options: argparse.Namespace) -> None:
    admin = bench_db.admin_url()
    url = await bench_db.fresh_database(admin)
    s3 = S3()
    bucket = await s3.new_bucket()
    try:
        with tempfile.TemporaryDirectory(prefix="dlm-bench-memory-") as work:
            source, back = Path(work) / "source", Path(work) / "back"
            source.mkdir()
            back.mkdir()
            block = os.urandom(MIB)
            for index in range(options.copies):
                with (source / f"big-{index}").open("wb") as stream:
                    for _ in range(options.size_mib):
                        stream.write(block)
            settings = {"migration_workers": str(options.copies), "migration_poll_seconds": "0.05"}
            with dlm_serve(url, work, **settings) as (base, server):
                http = Connection(base)
                await call(http, "POST", "/storage/init_location", location_name="bench", location_type="local-dev")
                for name, root in (("source", source), ("back", back)):
                    await call(
                        http, "POST", "/storage/init_storage", storage_name=name, storage_type="filesystem",
                        storage_interface="posix", root_directory=str(root), location_name="bench",
                    )  # fmt: skip
                await call(
                    http, "POST", "/storage/init_storage", s3.config, storage_name="s3", storage_type="objectstore",
                    storage_interface="s3", root_directory=bucket, location_name="bench",
                )  # fmt: skip
                uids = [
                    str(await call(http, "POST", "/ingest/register_data_item", item_name=f"big-{index}",
                                   uri=f"big-{index}", storage_name="source"))
                    for index in range(options.copies)
                ]  # fmt: skip
                at_rest = resident_mib(server.pid)
                total = options.copies * options.size_mib
                print(f"dlm serve at rest (catalogue set up): {at_rest:.0f} MiB resident")
                seconds, peak, on_s3 = await copy_all(http, uids, "s3", server.pid)
                print(f"POSIX→S3, {options.copies} × {options.size_mib} MiB at once: peak {peak:.0f} MiB, "
                      f"{total / seconds:.0f} MiB/s")  # fmt: skip
                seconds, peak, _ = await copy_all(http, on_s3, "back", server.pid)
                print(f"S3→POSIX, {options.copies} × {options.size_mib} MiB at once: peak {peak:.0f} MiB, "
                      f"{total / seconds:.0f} MiB/s")  # fmt: skip
                await http.close()
            rclone = rclone_peak_mib(source / "big-0", s3, bucket)
            if rclone is not None:
                print(f"rclone copyto POSIX→S3, one {options.size_mib} MiB file: peak {rclone:.0f} MiB")
    finally:
        await s3.drop_bucket(bucket)
        s3.close()
        await bench_db.drop_database(admin, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--copies", type=int, default=2)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
