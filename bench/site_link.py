"""One large copy from one site to another over a shaped link, beside the link's own rate and rclone
on the same link in the same run (issue 28: at least 80 % of the shaped rate).

Two network namespaces joined by a veth pair shaped with `tc tbf` (tests/sites/network.py builds
them), each with an S3 server (moto); at site perth a POSIX storage and a DLM copy worker (`dlm
worker run --location perth`). The copy goes from perth's disk to cape's bucket, its bytes once over
the link. rclone copies the same file over the same link to the same server. Needs root, iproute2,
moto and rclone (`apt-get install rclone`).

    sudo python bench/site_link.py --size-mib 1024 --rate 100mbit
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_db

from tests.conftest import S3_CREDENTIALS, free_port, new_bucket
from tests.sites.network import ADMIN, Site, database_hub, network_or_skip

MiB = 1024 * 1024


def megabits(rate: str) -> float:
    number = float(rate.lower().removesuffix("mbit").removesuffix("gbit"))
    return number * (1000 if rate.lower().endswith("gbit") else 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rate", default="100mbit", help="the link's shaped rate (tc tbf), e.g. 100mbit")
    arguments = parser.parse_args()
    admin = bench_db.admin_url()
    database = await bench_db.fresh_database(admin)
    network = network_or_skip(arguments.rate)
    work = Path(tempfile.mkdtemp(prefix="dlm-site-link-", dir=os.environ.get("DLM_BENCH_DIR")))
    try:
        async with database_hub(database) as (port, target):
            url = f"postgresql://{target['user'] or 'postgres'}@10.253.1.1:{port}/{target['database']}"
            secret = Fernet.generate_key().decode()
            perth = Site("perth", network, work, url, secret)
            cape = Site("cape", network, work, url.replace("10.253.1.1", "10.253.2.1"), secret)
            try:
                print(await run(perth, cape, work, arguments.size_mib, megabits(arguments.rate)))
            finally:
                perth.stop()
                cape.stop()
    finally:
        network.teardown()
        shutil.rmtree(work, ignore_errors=True)
        await bench_db.drop_database(admin, database)


async def run(perth: Site, cape: Site, work: Path, size_mib: int, link_mbit: float) -> str:
    s3_port, api_port = free_port(), free_port()
    cape.start("s3", sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", str(s3_port))
    perth.start("api", sys.executable, "-m", "dlm", "serve", "--host", "0.0.0.0", "--port", str(api_port),
                DLM_MIGRATION_WORKERS="0")  # fmt: skip
    config = {"type": "s3", "provider": "Other", "endpoint": f"http://{cape.address}:{s3_port}", **S3_CREDENTIALS}
    for _ in range(300):
        try:
            await new_bucket({**config, "endpoint": f"http://{cape.hub}:{s3_port}"}, "bucket")
            break
        except Exception:  # noqa: BLE001 - moto not up yet
            await asyncio.sleep(0.2)
    disk = work / "posix-perth"
    disk.mkdir()
    payload = disk / "big.dat"
    with payload.open("wb") as out:
        for _ in range(size_mib):
            out.write(os.urandom(MiB))
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=f"http://{perth.hub}:{api_port}", headers=headers, timeout=120) as api:
        for _ in range(300):
            try:
                if (await api.get("/health/ready")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        for name in ("perth", "cape"):
            await api.post("/storage/init_location", params={"location_name": name, "location_type": "local-dev"})
        await api.post(
            "/storage/init_storage",
            params={"storage_name": "posix-perth", "storage_type": "filesystem", "storage_interface": "posix",
                    "root_directory": str(disk), "location_name": "perth", "storage_phase": "GAS"},
        )  # fmt: skip
        made = await api.post(
            "/storage/init_storage",
            params={"storage_name": "s3-cape", "storage_type": "objectstore", "storage_interface": "s3",
                    "root_directory": "bucket", "location_name": "cape", "storage_phase": "SOLID"},
            json=config,
        )  # fmt: skip
        assert made.status_code == 200, made.text
        # The worker starts once its location exists (an unknown location stops it at start).
        perth.start("worker", sys.executable, "-m", "dlm", "worker", "run", "--location", "perth", "--copies", "1")
        uid = (
            await api.post(
                "/ingest/register_data_item",
                params={"item_name": "big", "uri": "big.dat", "storage_name": "posix-perth"},
            )
        ).json()
        started = time.monotonic()
        queued = (
            await api.post("/migration/copy_data_item", params={"uid": uid, "destination_name": "s3-cape"})
        ).json()
        deadline = time.monotonic() + 60 + 4 * size_mib * MiB / (link_mbit * 1e6 / 8)
        while True:
            job = (await api.get("/migration/get_migration", params={"migration_id": queued["migration_id"]})).json()[0]
            if job["status"] in ("SUCCEEDED", "FAILED"):
                break
            assert time.monotonic() < deadline, f"the copy did not finish: {job}; worker said: {perth.log('worker')}"
            await asyncio.sleep(0.2)
        dlm_seconds = time.monotonic() - started
        assert job["status"] == "SUCCEEDED", job
    rclone = shutil.which("rclone")
    rclone_seconds = None
    if rclone:
        # rclone refuses a custom CA bundle for plain-HTTP endpoints; it has no use for one here.
        environment = {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}
        environment.update(
            RCLONE_CONFIG_CAPE_TYPE="s3",
            RCLONE_CONFIG_CAPE_PROVIDER="Other",
            RCLONE_CONFIG_CAPE_ENDPOINT=f"http://{cape.address}:{s3_port}",
            RCLONE_CONFIG_CAPE_ACCESS_KEY_ID=S3_CREDENTIALS["access_key_id"],
            RCLONE_CONFIG_CAPE_SECRET_ACCESS_KEY=S3_CREDENTIALS["secret_access_key"],
            RCLONE_CONFIG_CAPE_REGION="us-east-1",
        )
        started = time.monotonic()
        await asyncio.to_thread(
            subprocess.run,
            ["ip", "netns", "exec", perth.namespace, rclone, "copyto", "--config", "/dev/null", str(payload),
             "cape:bucket/rclone.dat"],
            check=True, capture_output=True, env=environment,
        )  # fmt: skip
        rclone_seconds = time.monotonic() - started
    size = size_mib * MiB
    link = link_mbit * 1e6 / 8
    lines = [
        (
            f"{size_mib} MiB from perth's disk to cape's bucket over a link shaped to {link_mbit:g} Mbit/s "
            f"({link / MiB:.2f} MiB/s)"
        ),
        (
            f"  DLM copy_data_item:  {dlm_seconds:7.1f} s  {size / dlm_seconds / MiB:6.2f} MiB/s  "
            f"{100 * size / dlm_seconds / link:5.1f} % of the link"
        ),
    ]
    if rclone_seconds is not None:
        lines.append(
            f"  rclone copyto:       {rclone_seconds:7.1f} s  {size / rclone_seconds / MiB:6.2f} MiB/s  "
            f"{100 * size / rclone_seconds / link:5.1f} % of the link"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(main())
