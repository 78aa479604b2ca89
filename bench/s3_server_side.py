"""A copy inside one S3 service: DLM's migration between two buckets of one endpoint (S3 copies the
object itself, CopyObject, and computes its CRC32C; DLM verifies that against the registered one)
beside `rclone copyto` between the same buckets (rclone also copies server-side there), in the same
run. Also printed: the bytes that passed through DLM, from its /metrics
(`dlm_copied_bytes_through_total`), which issue 25 wants under 1 MiB for 1 GiB.

    python bench/s3_server_side.py [--size-mib 1024]

The endpoint is DLM_BENCH_S3_ENDPOINT (with DLM_BENCH_S3_KEY / DLM_BENCH_S3_SECRET), else a moto server
started here.
"""

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import bench_db  # the benches' shared database helpers, beside this script
from bench_server import Connection, call, dlm_serve
from copy_throughput import S3

MIB = 1024 * 1024


def through(base: str) -> tuple[float, float]:
    """The server's bytes copied and, of those, the bytes that passed through it."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()

    def value(name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    return value("dlm_copied_bytes_total"), value("dlm_copied_bytes_through_total")


async def put_payload(s3: S3, bucket: str, size_mib: int) -> None:
    block = os.urandom(MIB)
    async with s3._client() as client:
        upload = await client.create_multipart_upload(Bucket=bucket, Key="big.bin")
        parts = []
        part_mib = 64
        for number, start in enumerate(range(0, size_mib, part_mib), 1):
            body = b"".join(block[i % 251 :] + block[: i % 251] for i in range(start, min(size_mib, start + part_mib)))
            sent = await client.upload_part(
                Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], PartNumber=number, Body=body
            )
            parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        await client.complete_multipart_upload(
            Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
        )


async def dlm_copy(admin_url: str, work: str, s3: S3, source: str, destination: str) -> tuple[float, float, float]:
    """Seconds from copy_data_item to a verified READY replica; bytes copied; bytes through DLM."""
    url = await bench_db.fresh_database(admin_url)
    try:
        settings = {"migration_workers": "1", "migration_poll_seconds": "0.05"}
        with dlm_serve(url, work, **settings) as (base, _):
            http = Connection(base)
            await call(http, "POST", "/storage/init_location", location_name="bench", location_type="local-dev")
            for name, bucket in (("source", source), ("destination", destination)):
                await call(
                    http, "POST", "/storage/init_storage", s3.config, storage_name=name, storage_type="objectstore",
                    storage_interface="s3", root_directory=bucket, location_name="bench",
                )  # fmt: skip
            uid = await call(http, "POST", "/ingest/register_data_item", item_name="big", uri="big.bin",
                             storage_name="source")  # fmt: skip
            copied_before, through_before = through(base)
            started = time.perf_counter()
            queued: Any = await call(http, "POST", "/migration/copy_data_item", uid=uid, destination_name="destination")
            while True:
                [row] = await call(http, "GET", "/migration/get_migration", migration_id=queued["migration_id"])  # type: ignore[misc]
                if row["status"] not in ("PENDING", "RUNNING"):
                    break
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            copied_after, through_after = through(base)
            await http.close()
            if row["status"] != "SUCCEEDED":
                raise RuntimeError(f"DLM copy {row['status']}: {row['last_error']}")
            return elapsed, copied_after - copied_before, through_after - through_before
    finally:
        await bench_db.drop_database(admin_url, url)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    admin_url = bench_db.admin_url()
    s3 = S3()
    buckets: list[str] = []
    try:
        source = await s3.new_bucket()
        buckets.append(source)
        print(f"uploading {args.size_mib} MiB to the source bucket", file=sys.stderr)
        await put_payload(s3, source, args.size_mib)
        rows = []
        with tempfile.TemporaryDirectory(prefix="dlm-bench-s3s3-", dir=os.environ.get("DLM_BENCH_DIR")) as work:
            destination = await s3.new_bucket()
            buckets.append(destination)
            seconds, copied, passed = await dlm_copy(admin_url, work, s3, source, destination)
            rows.append(("DLM copy_data_item (verified)", seconds, f"{passed / MIB:.3f} MiB of {copied / MIB:.0f}"))
            if shutil.which("rclone"):
                destination = await s3.new_bucket()
                buckets.append(destination)
                started = time.perf_counter()
                await asyncio.to_thread(
                    subprocess.run,
                    ["rclone", "copyto", "--config", "/dev/null", f"bench:{source}/big.bin",
                     f"bench:{destination}/big.bin"],
                    check=True, env=s3.rclone_environment(), stdout=subprocess.DEVNULL,
                )  # fmt: skip
                rows.append(("rclone copyto", time.perf_counter() - started, "(not measured)"))
    finally:
        for bucket in buckets:
            await s3.drop_bucket(bucket)
        s3.close()
    print(f"\n1 object of {args.size_mib} MiB, bucket to bucket on one S3 endpoint\n")
    print(f"| {'tool':<30} | {'seconds':>8} | {'through the tool':<24} |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 26}|")
    for tool, seconds, passed_text in rows:
        print(f"| {tool:<30} | {seconds:8.2f} | {passed_text:<24} |")


if __name__ == "__main__":
    asyncio.run(main())
