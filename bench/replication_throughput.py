"""Replication throughput (issue 25): N small items registered in one bulk call on a GAS POSIX storage,
timed until every one is READY on a SOLID storage, with DLM's engines at their defaults apart from the
replication interval; beside `rclone copy --checksum` and `cp -r && sync` of the same files, in the
same run.

    python bench/replication_throughput.py [--items 10000] [--file-kib 4] [--to posix|s3|both]
                                           [--interval 5]

The clock starts when the bulk registration is sent and stops when the last item has its SOLID
replica: it counts the registration, the wait for the engine's next pass (at most --interval), the
planning, the copies with their verification and durability, and the bookkeeping. The database is
DLM_BENCH_DATABASE_URL, else DLM_TEST_DATABASE_URL, else the local PostgreSQL; S3 is moto, started
here (as in copy_throughput.py), unless DLM_BENCH_S3_ENDPOINT names another.
"""

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import bench_db
from bench_server import Connection, call, dlm_serve
from copy_throughput import S3


def _files(directory: Path, count: int, size: int) -> list[str]:
    directory.mkdir(parents=True)
    names = []
    for index in range(count):
        name = f"obs-{index:06d}.dat"
        (directory / name).write_bytes(os.urandom(size))
        names.append(name)
    return names


async def dlm_run(admin: str, work: Path, names: list[str], kind: str, s3: S3 | None, interval: str) -> float:
    """Seconds from the bulk registration to the last item READY on the SOLID storage."""
    url = await bench_db.fresh_database(admin)
    try:
        with dlm_serve(url, str(work), replication_interval_seconds=interval) as (base, _):
            http = Connection(base)
            await call(http, "POST", "/storage/init_location", location_name="bench", location_type="local-dev")
            await call(
                http, "POST", "/storage/init_storage", storage_name="gas", storage_type="filesystem",
                storage_interface="posix", root_directory=str(work / "gas"), location_name="bench",
                storage_phase="GAS",
            )  # fmt: skip
            if kind == "s3" and s3 is not None:
                bucket = await s3.new_bucket()
                await call(
                    http, "POST", "/storage/init_storage", s3.config, storage_name="solid",
                    storage_type="objectstore", storage_interface="s3", root_directory=bucket,
                    location_name="bench", storage_phase="SOLID",
                )  # fmt: skip
            else:
                (work / "solid").mkdir()
                await call(
                    http, "POST", "/storage/init_storage", storage_name="solid", storage_type="filesystem",
                    storage_interface="posix", root_directory=str(work / "solid"), location_name="bench",
                    storage_phase="SOLID",
                )  # fmt: skip
            entries = [{"item_name": name, "uri": f"batch/{name}", "storage_name": "gas"} for name in names]
            connection = await asyncpg.connect(bench_db.dsn(url))
            try:
                started = time.perf_counter()
                await call(http, "POST", "/ingest/register_data_items", entries)
                registered = time.perf_counter() - started
                while True:
                    ready = await connection.fetchval(
                        "SELECT count(*) FROM data_item d JOIN storage s USING (storage_id) "
                        "WHERE s.storage_name = 'solid' AND d.item_state = 'READY'"
                    )
                    if ready >= len(names):
                        break
                    failed = await connection.fetchval("SELECT count(*) FROM migration WHERE status = 'FAILED'")
                    if failed:
                        error = await connection.fetchval("SELECT last_error FROM migration WHERE status = 'FAILED'")
                        raise SystemExit(f"{failed} copies FAILED: {error}")
                    await asyncio.sleep(0.1)
                elapsed = time.perf_counter() - started
                timeline = await connection.fetchrow(
                    "SELECT extract(epoch FROM min(d.uid_creation)) AS registered, "
                    "extract(epoch FROM min(m.date)) AS first_queued, extract(epoch FROM max(m.date)) AS last_queued, "
                    "extract(epoch FROM min(m.completion_date)) AS first_done, "
                    "extract(epoch FROM max(m.completion_date)) AS last_done, "
                    "count(DISTINCT m.job_stats->>'seconds') AS batches "
                    "FROM migration m JOIN data_item d ON d.uid = m.source_uid"
                )
                start = float(timeline["registered"])
                print(
                    f"{kind}: registered in {registered:.2f} s; copies queued {float(timeline['first_queued']) - start:.2f}"
                    f"-{float(timeline['last_queued']) - start:.2f} s; done {float(timeline['first_done']) - start:.2f}"
                    f"-{float(timeline['last_done']) - start:.2f} s ({timeline['batches']} batches)"
                )
            finally:
                await connection.close()
            await http.close()
            return elapsed
    finally:
        await bench_db.drop_database(admin, url)


def _timed(command: str, environment: dict[str, str] | None = None) -> float:
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    subprocess.run(["sh", "-c", command], check=True, env=environment, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--file-kib", type=int, default=4)
    parser.add_argument("--to", choices=["posix", "s3", "both"], default="both")
    parser.add_argument("--interval", default="5", help="DLM_REPLICATION_INTERVAL_SECONDS for the run")
    arguments = parser.parse_args()
    admin = bench_db.admin_url()
    kinds = ["posix", "s3"] if arguments.to == "both" else [arguments.to]
    rclone = shutil.which("rclone")
    with tempfile.TemporaryDirectory(prefix="dlm-bench-", dir=os.environ.get("DLM_BENCH_DIR")) as scratch:
        work = Path(scratch)
        names = _files(work / "gas" / "batch", arguments.items, arguments.file_kib * 1024)
        s3 = S3() if "s3" in kinds else None
        rows = []
        try:
            for kind in kinds:
                run = work / f"dlm-{kind}"
                run.mkdir()
                shutil.copytree(work / "gas", run / "gas")
                dlm = await dlm_run(admin, run, names, kind, s3, arguments.interval)
                shutil.rmtree(run)
                source = shlex.quote(str(work / "gas" / "batch"))
                baselines: dict[str, float] = {}
                if kind == "posix":
                    target = work / f"cp-{uuid.uuid4().hex[:6]}"
                    baselines["cp -r && sync"] = _timed(f"cp -r {source} {shlex.quote(str(target))} && sync")
                    shutil.rmtree(target)
                    if rclone:
                        target = work / f"rclone-{uuid.uuid4().hex[:6]}"
                        baselines["rclone copy --checksum"] = _timed(
                            f"rclone copy --checksum {source} {shlex.quote(str(target))}"
                        )
                        shutil.rmtree(target)
                elif rclone and s3 is not None:
                    bucket = await s3.new_bucket()
                    baselines["rclone copy --checksum"] = _timed(
                        f"rclone copy --checksum {source} bench:{bucket}/batch", s3.rclone_environment()
                    )
                    await s3.drop_bucket(bucket)
                rows.append((kind, dlm, baselines))
        finally:
            if s3 is not None:
                s3.close()
    print(
        f"\n{arguments.items} x {arguments.file_kib} KiB, GAS POSIX -> SOLID, replication interval {arguments.interval} s"
    )
    print("| to | DLM end to end | items/s | baseline | baseline time | DLM / baseline |")
    print("|---|---|---|---|---|---|")
    for kind, dlm, baselines in rows:
        for tool, seconds in baselines.items() or {"(none)": float("nan")}.items():
            ratio = dlm / seconds if seconds == seconds else float("nan")
            print(f"| {kind} | {dlm:.2f} s | {arguments.items / dlm:.0f} | {tool} | {seconds:.2f} s | {ratio:.1f}x |")
    print(json.dumps({kind: {"dlm": dlm, **baselines} for kind, dlm, baselines in rows}))


if __name__ == "__main__":
    asyncio.run(main())
