"""Two sites in network namespaces the test makes, joined by one veth pair shaped with `tc tbf`: each
with a POSIX storage, an S3 server (moto) and its own DLM processes (an API server and two
`dlm worker run --location` workers), one database for both (reached through a hub the link does not
carry, as a site's database connection would be a link of its own). It shows that:

- a copy between two storages of one site moves no payload across the link (interface counters);
- a copy from one site to the other is carried once, by a worker that reaches both ends, and its bytes
  cross the link once;
- a copy no worker can reach (POSIX to POSIX across sites) is reported unplaceable, not left silent;
- with two workers per site, a link limited to one transfer never carries two;
- killing the worker carrying a copy (kill -9) hands the copy to the site's other worker after the lease.

Needs root, `ip netns` and `tc` (iproute2) and moto; without them it skips, saying which. The link's
throughput is measured by bench/site_link.py, not asserted here.
"""

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.conftest import S3_CREDENTIALS, free_port, new_bucket
from tests.sites.network import ADMIN, SITES, Network, Site, database_hub, network_or_skip, until

MiB = 1024 * 1024


@pytest.fixture
def network() -> Iterator[Network]:
    network = network_or_skip()
    try:
        yield network
    finally:
        network.teardown()


async def test_copies_stay_on_their_site_and_links_carry_what_they_may(
    network: Network, database_url: str, tmp_path: Path
) -> None:
    secret = Fernet.generate_key().decode()
    async with database_hub(database_url) as (port, target):
        sites = {}
        for name in SITES:
            hub = SITES[name][2]
            url = f"postgresql://{target['user'] or 'postgres'}@{hub}.1:{port}/{target['database']}"
            sites[name] = Site(name, network, tmp_path, url, secret)
        try:
            await _run_sites(network, sites, tmp_path)
        finally:
            for site in sites.values():
                await site.stop()


async def _run_sites(network: Network, sites: dict[str, Site], root: Path) -> None:
    perth, cape = sites["perth"], sites["cape"]
    s3_port, api_port = free_port(), free_port()
    for site in sites.values():
        site.start("s3", sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", str(s3_port))
        site.start("api", sys.executable, "-m", "dlm", "serve", "--host", "0.0.0.0", "--port", str(api_port),
                   DLM_MIGRATION_WORKERS="0")  # fmt: skip
    api = httpx.AsyncClient(
        base_url=f"http://{perth.hub}:{api_port}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
    )
    async with api:
        await until(lambda: _answers(api), lambda: f"site perth's API: {perth.log('api')}")
        configs = {}
        for name, site in sites.items():
            config = {
                "type": "s3",
                "provider": "Other",
                "endpoint": f"http://{site.address}:{s3_port}",
                **S3_CREDENTIALS,
            }
            reachable = {**config, "endpoint": f"http://{site.hub}:{s3_port}"}  # the same server, from here
            await until(lambda reachable=reachable: _bucket(reachable), lambda site=site: f"S3: {site.log('s3')}")
            configs[name] = config
            made = await api.post(
                "/storage/init_location", params={"location_name": name, "location_type": "local-dev"}
            )
            assert made.status_code == 200, made.text
            (root / f"posix-{name}").mkdir()
            for kind, params, body in (
                ("posix", {"storage_type": "filesystem", "storage_interface": "posix", "root_directory": str(root / f"posix-{name}")}, None),
                ("s3", {"storage_type": "objectstore", "storage_interface": "s3", "root_directory": "bucket"}, config),
            ):  # fmt: skip
                made = await api.post(
                    "/storage/init_storage",
                    params={
                        "storage_name": f"{kind}-{name}",
                        "location_name": name,
                        "storage_phase": "SOLID",
                        **params,
                    },
                    json=body,
                )
                assert made.status_code == 200, made.text
        # Two copy workers at each site, each in its own process.
        for name, site in sites.items():
            for index in (1, 2):
                site.start(
                    f"worker{index}", sys.executable, "-m", "dlm", "worker", "run", "--location", name, "--copies", "1"
                )
        await until(
            lambda: _workers(api, {"perth": 2, "cape": 2}),
            lambda: f"workers: {perth.log('worker1')} {cape.log('worker1')}",
        )

        async def register(name: str, storage: str, size: int) -> str:
            site = storage.rsplit("-", 1)[1]
            (root / f"posix-{site}" / name).write_bytes(os.urandom(size))
            made = await api.post(
                "/ingest/register_data_item", params={"item_name": name, "uri": name, "storage_name": storage}
            )
            assert made.status_code == 200, made.text
            return made.json()

        async def copied(uid: str, destination: str) -> dict[str, Any]:
            queued = await api.post("/migration/copy_data_item", params={"uid": uid, "destination_name": destination})
            assert queued.status_code == 200, queued.text
            return await _finished(api, queued.json()["migration_id"])

        # Within a site: posix-perth to s3-perth moves nothing across the link.
        local = await register("local.dat", "posix-perth", 8 * MiB)
        before = network.link_bytes()
        job = await copied(local, "s3-perth")
        assert job["status"] == "SUCCEEDED", job
        assert network.link_bytes() - before < 256 * 1024, "payload bytes crossed the link"
        assert _site_of(job) == "perth"

        # Across: posix-perth to s3-cape, which only perth's workers reach both ends of; once across.
        across = await register("across.dat", "posix-perth", 8 * MiB)
        before = network.link_bytes()
        job = await copied(across, "s3-cape")
        assert job["status"] == "SUCCEEDED" and job["attempts"] == 1, job
        assert _site_of(job) == "perth"
        crossed = network.link_bytes() - before
        assert 8 * MiB <= crossed < 8 * MiB * 1.25, f"{crossed} bytes crossed for 8 MiB: carried more than once"

        # Nobody reaches both a perth disk and a cape disk: reported, not silent.
        stranded = await register("stranded.dat", "posix-perth", 1024)
        queued = await api.post("/migration/copy_data_item", params={"uid": stranded, "destination_name": "posix-cape"})
        assert queued.status_code == 200, queued.text
        stuck = queued.json()["migration_id"]
        marked = await until(lambda: _unplaceable(api, stuck), "the stranded copy is reported", seconds=40)
        assert "posix-perth and posix-cape" in marked, marked
        await api.post("/migration/cancel_migration", params={"migration_id": stuck})

        # One transfer at a time from perth to cape, with two workers there.
        linked = await api.post(
            "/storage/set_location_link",
            params={"source_location": "perth", "destination_location": "cape", "max_transfers": 1},
        )
        assert linked.status_code == 200, linked.text
        uids = [await register(f"limited-{index}.dat", "posix-perth", 4 * MiB) for index in range(4)]
        queued_ids = []
        for uid in uids:
            response = await api.post("/migration/copy_data_item", params={"uid": uid, "destination_name": "s3-cape"})
            queued_ids.append(response.json()["migration_id"])
        most = 0
        while True:
            links = (await api.get("/storage/query_location_links")).json()
            [link] = [
                row for row in links if (row["source_location"], row["destination_location"]) == ("perth", "cape")
            ]
            most = max(most, link["running"])
            statuses = {(await _migration(api, m))["status"] for m in queued_ids}
            if statuses <= {"SUCCEEDED", "FAILED"}:
                break
            await asyncio.sleep(0.05)
        assert statuses == {"SUCCEEDED"} and most == 1, (statuses, most)
        await api.post(
            "/storage/set_location_link", params={"source_location": "perth", "destination_location": "cape"}
        )

        # kill -9 of the worker carrying a copy into cape: cape's other worker finishes it after the lease.
        # From S3 at perth (reached from anywhere) to cape's disk (from cape only): cape's workers carry it.
        big = await register("big.dat", "posix-perth", 48 * MiB)
        payload = (root / "posix-perth" / "big.dat").read_bytes()
        on_s3 = await copied(big, "s3-perth")
        queued = await api.post(
            "/migration/copy_data_item", params={"uid": on_s3["destination_uid"], "destination_name": "posix-cape"}
        )
        assert queued.status_code == 200, queued.text
        migration_id = queued.json()["migration_id"]
        running = await until(lambda: _running(api, migration_id), "the copy into cape starts")
        pid = int(running["lease_owner"].split(":")[1])
        assert _namespace_of(pid) == "cape"
        os.kill(pid, signal.SIGKILL)
        job = await _finished(api, migration_id, seconds=120)
        assert job["status"] == "SUCCEEDED" and job["attempts"] == 2, job
        assert int(job["job_stats"]["worker"].split(":")[1]) != pid
        assert _site_of(job) == "cape"
        assert (root / "posix-cape" / "big.dat").read_bytes() == payload


def _site_of(job: dict[str, Any]) -> str:
    """The site of the worker that finished ``job`` (its owner names its process)."""
    return _namespace_of(int(job["job_stats"]["worker"].split(":")[1]))


def _namespace_of(pid: int) -> str:
    """The site whose network namespace process ``pid`` runs in."""
    inode = os.stat(f"/proc/{pid}/ns/net").st_ino
    for site, (letter, _, _) in SITES.items():
        if os.stat(f"/var/run/netns/dlm{os.getpid() % 100000}{letter}").st_ino == inode:
            return site
    raise AssertionError(f"process {pid} is in neither site")


async def _answers(api: httpx.AsyncClient) -> bool:
    return (await api.get("/health/ready")).status_code == 200


async def _bucket(config: dict[str, Any]) -> bool:
    try:
        await new_bucket(config, "bucket")
    except Exception:  # noqa: BLE001 - not up yet
        return False
    return True


async def _workers(api: httpx.AsyncClient, wanted: dict[str, int]) -> bool:
    workers = (await api.get("/storage/query_workers")).json()
    return {row["location"]: row["processes"] for row in workers if row["processes"]} == wanted


async def _migration(api: httpx.AsyncClient, migration_id: int) -> dict[str, Any]:
    return (await api.get("/migration/get_migration", params={"migration_id": migration_id})).json()[0]


async def _finished(api: httpx.AsyncClient, migration_id: int, seconds: float = 60) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        job = await _migration(api, migration_id)
        return job if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    return await until(done, f"migration {migration_id} finishes", seconds)


async def _running(api: httpx.AsyncClient, migration_id: int) -> dict[str, Any] | None:
    job = await _migration(api, migration_id)
    return job if job["status"] == "RUNNING" and job["bytes_done"] > 0 else None


async def _unplaceable(api: httpx.AsyncClient, migration_id: int) -> str | None:
    error = (await _migration(api, migration_id))["last_error"] or ""
    return error if error.startswith("unplaceable:") else None
