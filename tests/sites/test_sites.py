"""Sites: a worker at a location takes only the copies whose two storages it reaches, its own
location's sources first; a link between locations carries no more transfers at once than it may;
a copy no running worker can reach is reported, and the report withdrawn once one can."""

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.db.engine import transaction
from dlm.db.models import Migration, Storage
from dlm.enums import MigrationStatus
from dlm.migration.worker import claim
from dlm.sites import service as sites
from tests.conftest import Registry, assert_error
from tests.migration.conftest import copy

LEASE = 60.0


@pytest.fixture
async def two_sites(registry: Registry, tmp_path: Path) -> dict[str, str]:
    """Perth with two disks, Cape Town with one; every storage POSIX, so by default reached from its
    own location only. Returns the uid of one READY item on perth-disk and one on cape-disk."""
    await registry.storage("perth-disk", root=tmp_path / "perth-disk", location="perth")
    await registry.storage("perth-archive", root=tmp_path / "perth-archive", location="perth", phase="SOLID")
    await registry.storage("cape-disk", root=tmp_path / "cape-disk", location="cape-town")
    items = {}
    for storage in ("perth-disk", "cape-disk"):
        (tmp_path / storage / f"obs-{storage}").write_bytes(storage.encode())
        response = await registry.client.post(
            "/ingest/register_data_item",
            params={"item_name": f"obs-{storage}", "uri": f"obs-{storage}", "storage_name": storage},
        )
        assert response.status_code == 200, response.text
        items[storage] = response.json()
    return items


async def site(session: AsyncSession, name: str) -> sites.Site:
    return await sites.find_site(session, name)


async def claimed(sessionmaker: async_sessionmaker[AsyncSession], where: str | None, owner: str = "w") -> int | None:
    """The migration a worker at ``where`` (None: anywhere) claims now, or None."""
    async with transaction(sessionmaker, actor="test") as session:
        at = await site(session, where) if where else None
        job = await claim(session, owner, LEASE, at)
        return None if job is None else job.migration_id


async def workers_at(sessionmaker: async_sessionmaker[AsyncSession], *locations: str) -> None:
    """Copy workers running at these locations (and none without one), as their processes say."""
    async with transaction(sessionmaker, actor="test") as session:
        for name in locations:
            await sites.announce(session, f"worker-{name}", await site(session, name), 1)


async def release(sessionmaker: async_sessionmaker[AsyncSession], migration_id: int) -> None:
    async with transaction(sessionmaker, actor="test") as session:
        job = await session.get(Migration, migration_id)
        assert job is not None
        job.status, job.lease_owner, job.lease_expires = MigrationStatus.PENDING, None, None


async def test_a_worker_takes_only_what_it_reaches_from_its_location(
    registry: Registry, two_sites: dict[str, str], sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    local = (await copy(registry.client, uid=two_sites["perth-disk"], destination_name="perth-archive"))["migration_id"]
    across = (await copy(registry.client, uid=two_sites["perth-disk"], destination_name="cape-disk"))["migration_id"]
    # Cape Town reaches neither Perth disk; Perth reaches the local copy only; nobody both ends of the other.
    assert await claimed(sessionmaker, "cape-town") is None
    assert await claimed(sessionmaker, "perth") == local
    assert await claimed(sessionmaker, "perth") is None
    # Cape Town's disk mounted at Perth too (say, over a WAN file system): Perth can now carry it.
    updated = await registry.client.patch(
        "/storage/update_storage", params={"storage_name": "cape-disk", "reachable_from": "perth,cape-town"}
    )
    assert updated.status_code == 200 and updated.json()["reachable_from"] == ["cape-town", "perth"], updated.text
    assert await claimed(sessionmaker, "perth") == across
    # A worker with no location takes anything, as before.
    await release(sessionmaker, across)
    assert await claimed(sessionmaker, None) == across


async def test_a_worker_pushes_its_own_locations_copies_first(
    registry: Registry, two_sites: dict[str, str], sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    for name in ("perth-disk", "cape-disk"):
        await registry.client.patch("/storage/update_storage", params={"storage_name": name, "reachable_from": "*"})
    pull = (await copy(registry.client, uid=two_sites["perth-disk"], destination_name="cape-disk"))["migration_id"]
    push = (await copy(registry.client, uid=two_sites["cape-disk"], destination_name="perth-disk"))["migration_id"]
    assert pull < push, "the pull was queued first"
    assert await claimed(sessionmaker, "cape-town") == push, "its source is at Cape Town"
    assert await claimed(sessionmaker, "cape-town") == pull


async def test_a_link_carries_no_more_transfers_than_it_may(
    registry: Registry, two_sites: dict[str, str], sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    for name in ("perth-disk", "cape-disk"):
        await registry.client.patch("/storage/update_storage", params={"storage_name": name, "reachable_from": "*"})
    await registry.storage("cape-tape", root=tmp_path / "cape-tape", location="cape-town")
    await registry.client.patch("/storage/update_storage", params={"storage_name": "cape-tape", "reachable_from": "*"})
    linked = await registry.client.post(
        "/storage/set_location_link",
        params={"source_location": "perth", "destination_location": "cape-town", "max_transfers": 1},
    )
    assert linked.status_code == 200, linked.text
    assert linked.json()["max_transfers"] == 1
    first = (await copy(registry.client, uid=two_sites["perth-disk"], destination_name="cape-disk"))["migration_id"]
    second = (await copy(registry.client, uid=two_sites["perth-disk"], destination_name="cape-tape"))["migration_id"]
    back = await copy(registry.client, uid=two_sites["cape-disk"], destination_name="perth-archive")
    assert await claimed(sessionmaker, None, owner="one") == first
    # The link from Perth to Cape Town is full; the other way is another link.
    assert await claimed(sessionmaker, None, owner="two") == back["migration_id"]
    assert await claimed(sessionmaker, None, owner="three") is None
    links = {(link["source_location"], link["destination_location"]): link for link in
             (await registry.client.get("/storage/query_location_links")).json()}  # fmt: skip
    assert links["perth", "cape-town"] == {
        "source_location": "perth", "destination_location": "cape-town", "max_transfers": 1,
        "max_bytes_per_second": None, "running": 1, "queued": 1,
    }  # fmt: skip
    assert links["cape-town", "perth"]["running"] == 1 and links["cape-town", "perth"]["max_transfers"] is None
    await release(sessionmaker, first)
    assert await claimed(sessionmaker, None, owner="three") in (first, second), "a place on the link again"
    # Without limits the link's row goes; its traffic is still listed.
    removed = await registry.client.post(
        "/storage/set_location_link", params={"source_location": "perth", "destination_location": "cape-town"}
    )
    assert removed.json()["max_transfers"] is None and removed.json()["running"] == 1


async def test_a_links_bandwidth_is_shared_by_the_transfers_it_allows(
    registry: Registry, two_sites: dict[str, str], sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await registry.client.post(
        "/storage/set_location_link",
        params={"source_location": "perth", "destination_location": "cape-town", "max_transfers": 4,
                "max_bytes_per_second": 100_000_000},
    )  # fmt: skip
    async with sessionmaker() as session:
        storages = {row.storage_name: row for row in await session.scalars(select(Storage))}
        assert await sites.link_rate(session, storages["perth-disk"], storages["cape-disk"]) == 25_000_000
        assert await sites.link_rate(session, storages["cape-disk"], storages["perth-disk"]) == 0, "another link"
        assert await sites.link_rate(session, storages["perth-disk"], storages["perth-archive"]) == 0, "no link"


async def test_a_copy_no_running_worker_reaches_is_reported_until_one_does(
    registry: Registry, two_sites: dict[str, str], sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    local = (await copy(registry.client, uid=two_sites["perth-disk"], destination_name="perth-archive"))["migration_id"]

    async def last_error() -> Any:
        return (await registry.client.get("/migration/get_migration", params={"migration_id": local})).json()[0][
            "last_error"
        ]

    async def present(process: str, where: str | None) -> None:
        async with transaction(sessionmaker, actor="test") as session:
            await sites.announce(session, process, await site(session, where) if where else None, 2)

    async def place() -> tuple[int, int]:
        async with transaction(sessionmaker, actor="test") as session:
            return await sites.place_copies(session)

    assert await place() == (0, 0), "no worker runs anywhere: nothing is said"
    await present("cape-worker", "cape-town")
    assert await place() == (1, 0)
    assert (await last_error()).startswith("unplaceable: no running worker reaches both perth-disk and perth-archive")
    assert await place() == (0, 0), "said once"
    workers = (await registry.client.get("/storage/query_workers")).json()
    assert [(row["location"], row["copies"], row["queued"]) for row in workers] == [
        ("cape-town", 2, 0),
        ("perth", 0, 1),
    ]
    # The operator page and the metrics say so too.
    seen = (await registry.client.get("/ui/overview")).json()["sites"]
    assert seen["unplaceable"] == 1 and [row["location"] for row in seen["workers"] if row["processes"]] == [
        "cape-town"
    ]
    metrics = (await registry.client.get("/metrics")).text
    assert "dlm_copies_unplaceable 1.0" in metrics
    assert 'dlm_site_workers{location="cape-town"} 2.0' in metrics
    assert 'dlm_site_queued_copies{location="perth"} 1.0' in metrics
    assert 'dlm_link_queued_copies{destination_location="perth",source_location="perth"}' not in metrics, (
        "a copy within a location is on no link"
    )
    await present("perth-worker", "perth")
    assert await place() == (0, 1)
    assert await last_error() is None
    async with transaction(sessionmaker, actor="test") as session:
        await sites.withdraw(session, "perth-worker")
    assert await place() == (1, 0)


async def test_bad_site_settings_are_refused_naming_the_field(registry: Registry, two_sites: dict[str, str]) -> None:
    client = registry.client
    unknown = await client.patch(
        "/storage/update_storage", params={"storage_name": "cape-disk", "reachable_from": "moon"}
    )
    assert_error(unknown, 422, "InvalidQueryParameters", "reachable_from", "moon")
    same = await client.post(
        "/storage/set_location_link",
        params={"source_location": "perth", "destination_location": "perth", "max_transfers": 1},
    )
    assert_error(same, 422, "InvalidQueryParameters", "destination_location")
    nowhere = await client.post(
        "/storage/set_location_link",
        params={"source_location": "moon", "destination_location": "perth", "max_transfers": 1},
    )
    assert nowhere.status_code in (404, 422) and "moon" in nowhere.json()["message"], nowhere.text
    zero = await client.post(
        "/storage/set_location_link",
        params={"source_location": "perth", "destination_location": "cape-town", "max_transfers": 0},
    )
    assert zero.status_code in (400, 422) and "max_transfers" in zero.text, zero.text
    reset = await client.patch("/storage/update_storage", params={"storage_name": "cape-disk", "reachable_from": ""})
    assert reset.status_code == 200 and reset.json()["reachable_from"] is None


async def test_a_copy_reads_from_the_replica_a_worker_can_carry_to_its_destination(
    registry: Registry, two_sites: dict[str, str], sessionmaker: async_sessionmaker[AsyncSession], settings: Any
) -> None:
    """Of two READY replicas at Perth, the copy to Cape Town reads from the one Cape Town also reaches
    (a file system mounted at both sites), not from the Perth-only disk, which no worker could carry."""
    from dlm.migration.worker import run_next

    await workers_at(sessionmaker, "perth", "cape-town")
    await registry.client.patch(
        "/storage/update_storage", params={"storage_name": "perth-archive", "reachable_from": "*"}
    )
    to_archive = await copy(registry.client, uid=two_sites["perth-disk"], destination_name="perth-archive")
    assert await run_next(sessionmaker, settings, "perth-worker", None) == to_archive["migration_id"]
    item = (await registry.client.get("/request/query_data_item", params={"uid": two_sites["perth-disk"]})).json()[0]
    queued = await registry.client.post(
        "/migration/copy_data_item", params={"oid": item["oid"], "destination_name": "cape-disk"}
    )
    assert queued.status_code == 200, queued.text
    job = (
        await registry.client.get("/migration/get_migration", params={"migration_id": queued.json()["migration_id"]})
    ).json()[0]
    storages = {
        row["storage_id"]: row["storage_name"] for row in (await registry.client.get("/storage/query_storage")).json()
    }
    assert storages[job["source_storage_id"]] == "perth-archive"


async def test_replication_places_copies_a_worker_can_carry(
    registry: Registry, tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """An item on a Perth disk that must reach SOLID: Cape Town's SOLID archive is another site (which
    the policy prefers) but no worker reaches both it and the Perth disk; Perth's SOLID archive is
    carried by Perth's workers. The copy goes there."""
    from dlm.lifecycle.replication import run_once

    await registry.storage("perth-disk", root=tmp_path / "perth-disk", location="perth")
    await registry.storage("perth-archive", root=tmp_path / "perth-archive", location="perth", phase="SOLID")
    await registry.storage("cape-archive", root=tmp_path / "cape-archive", location="cape-town", phase="SOLID")
    await workers_at(sessionmaker, "perth", "cape-town")
    (tmp_path / "perth-disk" / "obs").write_bytes(b"o")
    made = await registry.client.post(
        "/ingest/register_data_item", params={"item_name": "obs", "uri": "obs", "storage_name": "perth-disk"}
    )
    assert made.status_code == 200, made.text
    report = await run_once(sessionmaker, dry_run=True)
    assert [planned.destination for planned in report.queued] == ["perth-archive"], report
    # With Cape Town's archive reached from Perth too, the other site wins again.
    await registry.client.patch(
        "/storage/update_storage", params={"storage_name": "cape-archive", "reachable_from": "*"}
    )
    report = await run_once(sessionmaker, dry_run=True)
    assert [planned.destination for planned in report.queued] == ["cape-archive"], report


async def test_a_storage_carries_no_more_transfers_than_it_may(
    registry: Registry, two_sites: dict[str, str], sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await registry.storage("perth-tape", root=tmp_path / "perth-tape", location="perth", phase="SOLID")
    limited = await registry.client.patch(
        "/storage/update_storage", params={"storage_name": "perth-tape", "max_transfers": 1}
    )
    assert limited.status_code == 200 and limited.json()["max_transfers"] == 1, limited.text
    (tmp_path / "perth-disk" / "second").write_bytes(b"second")
    second = await registry.register("second", "second", storage="perth-disk")
    first = two_sites["perth-disk"]
    first_to_tape = (await copy(registry.client, uid=first, destination_name="perth-tape"))["migration_id"]
    second_to_tape = (await copy(registry.client, uid=second, destination_name="perth-tape"))["migration_id"]
    first_to_archive = (await copy(registry.client, uid=first, destination_name="perth-archive"))["migration_id"]
    assert await claimed(sessionmaker, None, owner="one") == first_to_tape
    # The tape is full; the archive is not, nor the disk they are read from.
    assert await claimed(sessionmaker, None, owner="two") == first_to_archive
    assert await claimed(sessionmaker, None, owner="three") is None
    # The source's limit counts too: the disk now carries one copy and may carry one.
    await release(sessionmaker, first_to_archive)
    await registry.client.patch("/storage/update_storage", params={"storage_name": "perth-disk", "max_transfers": 1})
    assert await claimed(sessionmaker, None, owner="two") is None
    # 0 lifts a limit: the next copy goes.
    for name in ("perth-disk", "perth-tape"):
        lifted = await registry.client.patch(
            "/storage/update_storage", params={"storage_name": name, "max_transfers": 0}
        )
        assert lifted.json()["max_transfers"] is None, lifted.text
    assert await claimed(sessionmaker, None, owner="two") in (second_to_tape, first_to_archive)
    events = (await registry.client.get("/storage/query_storage_events", params={"storage_name": "perth-tape"})).json()
    assert any("max_transfers: None -> 1" in (event.get("detail") or "") for event in events), events


async def test_a_storage_limit_must_be_a_count(registry: Registry, two_sites: dict[str, str]) -> None:
    for value in ("-1", "many"):
        response = await registry.client.patch(
            "/storage/update_storage", params={"storage_name": "perth-disk", "max_transfers": value}
        )
        assert_error(response, 422, "InvalidQueryParameters", "max_transfers")
