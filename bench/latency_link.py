"""A large upload over a link with latency: DLM's S3 upload with one part in flight, with its measured
window (dlm.transfer.window, up to 16 parts), and rclone (four parts, its default) in the same run,
all through one delaying proxy in front of the same S3 server (issue 28, item 4).

`tc netem` is not in every kernel, so the latency comes from a TCP proxy on loopback that holds
every byte for the one-way delay before passing it on, in both directions, without limiting the rate.

    python bench/latency_link.py --size-mib 256 --delay-ms 25
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import bench_db
from bench_server import Connection, call, dlm_serve, free_port
from copy_throughput import S3

MIB = 1024 * 1024


async def _delayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Pass what ``reader`` gives to ``writer``, each piece ``delay`` seconds after it arrived."""
    pieces: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def take() -> None:
        while piece := await reader.read(256 * 1024):
            await pieces.put((time.monotonic() + delay, piece))
        await pieces.put((time.monotonic() + delay, b""))

    taking = asyncio.create_task(take())
    try:
        while True:
            due, piece = await pieces.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not piece:
                break
            writer.write(piece)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        taking.cancel()
        writer.close()


async def delaying_proxy(target_port: int, delay: float) -> tuple[asyncio.Server, int]:
    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            _delayed(client_reader, server_writer, delay), _delayed(server_reader, client_writer, delay)
        )

    port = free_port()
    return await asyncio.start_server(relay, "127.0.0.1", port), port


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one way; the round trip is twice this")
    arguments = parser.parse_args()
    s3 = S3()
    work = tempfile.mkdtemp(prefix="dlm-latency-", dir=os.environ.get("DLM_BENCH_DIR"))
    admin = bench_db.admin_url()
    database = await bench_db.fresh_database(admin)
    proxy, proxy_port = await delaying_proxy(int(s3.endpoint.rsplit(":", 1)[1]), arguments.delay_ms / 1000)
    endpoint = f"http://127.0.0.1:{proxy_port}"
    try:
        source = Path(work) / "store"
        source.mkdir()
        with (source / "big.dat").open("wb") as out:
            for _ in range(arguments.size_mib):
                out.write(os.urandom(MIB))
        rows = []
        with dlm_serve(database, work, migration_workers="1") as (base, _):
            http = Connection(base)
            await call(http, "POST", "/storage/init_location", location_name="bench", location_type="local-dev")
            await call(http, "POST", "/storage/init_storage", storage_name="disk", storage_type="filesystem",
                       storage_interface="posix", root_directory=str(source), location_name="bench")  # fmt: skip
            for name, most in (("one part in flight", 1), ("measured window (up to 16)", 16)):
                bucket = f"bench-{most}"
                await _bucket(s3, bucket)
                config = {**s3.config, "endpoint": endpoint, "upload_concurrency": str(most)}
                await call(http, "POST", "/storage/init_storage", config, storage_name=bucket,
                           storage_type="objectstore", storage_interface="s3", root_directory=bucket,
                           location_name="bench")  # fmt: skip
            uid = await call(
                http, "POST", "/ingest/register_data_item", item_name="big", uri="big.dat", storage_name="disk"
            )
            for name, most in (("one part in flight", 1), ("measured window (up to 16)", 16)):
                started = time.monotonic()
                queued = await call(
                    http, "POST", "/migration/copy_data_item", uid=uid, destination_name=f"bench-{most}"
                )
                while True:
                    [job] = await call(http, "GET", "/migration/get_migration", migration_id=queued["migration_id"])  # type: ignore[index]
                    if job["status"] in ("SUCCEEDED", "FAILED"):
                        break
                    await asyncio.sleep(0.1)
                assert job["status"] == "SUCCEEDED", job
                rows.append((f"DLM, {name}", time.monotonic() - started))
            await http.close()
        if shutil.which("rclone"):
            await _bucket(s3, "bench-rclone")
            environment = {**s3.rclone_environment(), "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint}
            started = time.monotonic()
            await asyncio.to_thread(
                subprocess.run,
                ["rclone", "copyto", "--config", "/dev/null", str(source / "big.dat"), "bench:bench-rclone/big.dat"],
                env=environment, check=True, capture_output=True,
            )  # fmt: skip
            rows.append(("rclone copyto (4 parts)", time.monotonic() - started))
        size = arguments.size_mib * MIB
        print(f"{arguments.size_mib} MiB POSIX -> S3 through a {2 * arguments.delay_ms:g} ms round trip")
        for name, seconds in rows:
            print(f"  {name:32} {seconds:7.1f} s  {size / seconds / MIB:7.2f} MiB/s")
    finally:
        proxy.close()
        if s3.server is not None:
            s3.server.terminate()
        shutil.rmtree(work, ignore_errors=True)
        await bench_db.drop_database(admin, database)


async def _bucket(s3: S3, name: str) -> None:
    import aioboto3

    async with aioboto3.Session().client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=s3.key,
        aws_secret_access_key=s3.secret,
        region_name="us-east-1",
    ) as client:
        await client.create_bucket(Bucket=name)


if __name__ == "__main__":
    asyncio.run(main())
