"""Where bytes can go without crossing a site they need not.

A storage is reached directly from some locations (``storage.reachable_from``; by default a POSIX
storage only from its own location, where it is mounted, and S3 and SFTP from any). A worker that runs
at a location (``DLM_WORKER_LOCATION``, ``dlm worker run --location``) takes only the copies whose two
storages it reaches, its own location's sources first (push); a worker with no location takes any, as
before. Copies between two locations share that link's limits (``location_link``): so many at once,
and so many bytes a second in all. Processes running copy workers say where they run
(``worker_presence``), so that a copy no running worker can reach is reported as unplaceable rather
than left waiting in silence.
"""

import datetime
import logging
import uuid
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    any_,
    case,
    delete,
    distinct,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from dlm.db.models import Location, LocationLink, Migration, Storage, WorkerPresence
from dlm.enums import MigrationStatus, StorageInterface
from dlm.errors import InvalidQueryParameters, NotFound

log = logging.getLogger("dlm.sites")

ANYWHERE = "*"
# A process that has not said it is running for this long has stopped or died.
PRESENCE_TIMEOUT = datetime.timedelta(seconds=30)
UNPLACEABLE = "unplaceable: "
# Claims take this advisory lock while a link or a storage has a limit on its transfers, so that two
# claims cannot both take the last place on it.
CLAIM_LOCK = 0x4C494E4B  # "LINK"
# Copies marked (or cleared) unplaceable per pass, at most.
PLACED_AT_ONCE = 1000
# The advisory lock of the pass that marks unplaceable copies: one process at a time.
PLACE_LOCK = 0x504C4143  # "PLAC"


class Site:
    """Where a worker runs: a location's id and name."""

    def __init__(self, location_id: uuid.UUID, name: str) -> None:
        self.location_id, self.name = location_id, name


async def find_site(session: AsyncSession, name: str) -> Site:
    location_id = await session.scalar(select(Location.location_id).where(Location.location_name == name))
    if location_id is None:
        raise NotFound(f"worker location: no location named {name!r} (create it with init_location)")
    return Site(location_id, name)


def reachable(storage: Any, location_id: Any, location_name: Any) -> ColumnElement[bool]:
    """Whether ``storage`` (a Storage entity or alias) is reached directly from the location with this
    id and name (SQL values or columns)."""
    return case(
        (
            storage.reachable_from.is_(None),
            or_(storage.storage_interface != StorageInterface.POSIX, storage.location_id == location_id),
        ),
        else_=or_(location_name == any_(storage.reachable_from), literal(ANYWHERE) == any_(storage.reachable_from)),
    )


async def reachable_from_names(session: AsyncSession, names: str) -> list[str] | None:
    """``reachable_from`` as update_storage takes it: location names, comma-separated; ``*`` for every
    location; empty for the default (None). Unknown names are a 422 naming them."""
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    if not chosen:
        return None
    if ANYWHERE in chosen:
        return [ANYWHERE]
    known = set(await session.scalars(select(Location.location_name).where(Location.location_name.in_(chosen))))
    if unknown := [name for name in chosen if name not in known]:
        raise InvalidQueryParameters(f"reachable_from: no location named {', '.join(map(repr, unknown))}")
    return sorted(set(chosen))


# --- claims ----------------------------------------------------------------------------------------

SOURCE, DESTINATION = aliased(Storage, name="source_storage"), aliased(Storage, name="destination_storage")


def joined_storages(query: Any) -> Any:
    """``query`` over migrations, joined to its two storages as SOURCE and DESTINATION."""
    return query.join(SOURCE, SOURCE.storage_id == Migration.source_storage_id).join(
        DESTINATION, DESTINATION.storage_id == Migration.destination_storage_id
    )


def within_reach(site: Site) -> ColumnElement[bool]:
    """A copy a worker at ``site`` may carry: both storages reached from there."""
    return and_(reachable(SOURCE, site.location_id, site.name), reachable(DESTINATION, site.location_id, site.name))


def pushed_first(site: Site) -> ColumnElement[Any]:
    """Its own location's sources first: a worker pushes rather than pulls across a link."""
    return (SOURCE.location_id == site.location_id).desc()


def _transfers_by_link() -> Any:
    """The transfers under way between each pair of locations (source, destination, transfers): a
    worker's copy, or its batch, is one; a lease run out is none."""
    return (
        joined_storages(
            select(
                SOURCE.location_id.label("source"),
                DESTINATION.location_id.label("destination"),
                func.count(distinct(Migration.lease_owner)).label("transfers"),
            )
        )
        .where(_running())
        .group_by(SOURCE.location_id, DESTINATION.location_id)
    )


class Full:
    """The links and storages carrying as many transfers as they may, when a claim looked."""

    def __init__(self, links: list[tuple[uuid.UUID, uuid.UUID]], storages: list[uuid.UUID]) -> None:
        self.links, self.storages = links, storages

    def avoided(self, query: Any) -> Any:
        """``query`` over migrations (joined to their storages when links are full) without these."""
        if self.links:
            query = query.where(~tuple_(SOURCE.location_id, DESTINATION.location_id).in_(self.links))
        if self.storages:
            query = query.where(
                Migration.source_storage_id.not_in(self.storages),
                Migration.destination_storage_id.not_in(self.storages),
            )
        return query


async def full(session: AsyncSession) -> Full:
    """What a claim must leave alone now, with the claim lock taken when any link or storage has a limit
    on its transfers (held until the claim commits): no two claims take the last place on either."""
    links_limited, storages_limited = (
        await session.execute(
            select(
                exists().where(LocationLink.max_transfers.is_not(None)),
                exists().where(Storage.max_transfers.is_not(None)),
            )
        )
    ).one()
    if not (links_limited or storages_limited):
        return Full([], [])
    await session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK)))
    links: list[tuple[uuid.UUID, uuid.UUID]] = []
    storages: list[uuid.UUID] = []
    if links_limited:
        running = _transfers_by_link().subquery()
        rows = await session.execute(
            select(LocationLink.source_location_id, LocationLink.destination_location_id).join(
                running,
                and_(
                    running.c.source == LocationLink.source_location_id,
                    running.c.destination == LocationLink.destination_location_id,
                    running.c.transfers >= LocationLink.max_transfers,
                ),
            )
        )
        links = [(source, destination) for source, destination in rows]
    if storages_limited:
        storages = list(await session.scalars(_full_storages()))
    return Full(links, storages)


def _full_storages() -> Any:
    """The storages with a limit that as many transfers read from or write to as it allows."""
    ends = (
        select(Migration.source_storage_id.label("storage_id"), Migration.lease_owner)
        .where(_running())
        .union(select(Migration.destination_storage_id, Migration.lease_owner).where(_running()))
        .subquery()
    )
    return (
        select(Storage.storage_id)
        .join(ends, ends.c.storage_id == Storage.storage_id)
        .where(Storage.max_transfers.is_not(None))
        .group_by(Storage.storage_id, Storage.max_transfers)
        .having(func.count(distinct(ends.c.lease_owner)) >= Storage.max_transfers)
    )


def _running() -> ColumnElement[bool]:
    """A copy a worker is carrying now (a lease run out is none)."""
    return and_(Migration.status == MigrationStatus.RUNNING, Migration.lease_expires > func.now())


async def link_of(
    session: AsyncSession, source_storage_id: uuid.UUID, destination_storage_id: uuid.UUID
) -> tuple[str, str]:
    """The names of the locations a copy between these storages goes from and to."""
    names = dict(
        (
            await session.execute(
                select(Storage.storage_id, Location.location_name)
                .join(Location, Location.location_id == Storage.location_id)
                .where(Storage.storage_id.in_([source_storage_id, destination_storage_id]))
            )
        ).all()
    )
    return names.get(source_storage_id, ""), names.get(destination_storage_id, "")


async def unplaceable_copies(session: AsyncSession) -> int:
    return int(
        await session.scalar(
            select(func.count()).where(
                Migration.status == MigrationStatus.PENDING, Migration.last_error.like(UNPLACEABLE + "%")
            )
        )
        or 0
    )


async def link_rate(session: AsyncSession, source: Storage, destination: Storage) -> int:
    """Bytes a second one transfer between these storages may use (0: no limit): its link's cap shared
    evenly among the transfers the link allows at once."""
    if source.location_id == destination.location_id:
        return 0
    link = await session.get(LocationLink, (source.location_id, destination.location_id))
    if link is None or not link.max_bytes_per_second:
        return 0
    return max(1, link.max_bytes_per_second // max(1, link.max_transfers or 1))


# --- choosing sources and destinations by link -----------------------------------------------------


class Links:
    """A snapshot of the locations and the links between them, for ranking copies: where each storage
    is reached from, each link's transfers and limit, each location's country (its region)."""

    def __init__(
        self,
        names: dict[uuid.UUID, str],
        countries: dict[uuid.UUID, str | None],
        traffic: dict[tuple[uuid.UUID, uuid.UUID], tuple[int, int | None]],
        anywhere: bool,
    ) -> None:
        self.names, self.countries, self.traffic = names, countries, traffic
        # A worker with no location runs (or none is known to run): it reaches every storage.
        self.anywhere = anywhere

    @classmethod
    async def load(cls, session: AsyncSession) -> "Links":
        locations = (
            await session.execute(select(Location.location_id, Location.location_name, Location.location_country))
        ).all()
        running = (await session.execute(_transfers_by_link())).all()
        limits = (
            await session.execute(
                select(
                    LocationLink.source_location_id, LocationLink.destination_location_id, LocationLink.max_transfers
                )
            )
        ).all()
        traffic: dict[tuple[uuid.UUID, uuid.UUID], tuple[int, int | None]] = {
            (source, destination): (int(count), None) for source, destination, count in running
        }
        for source, destination, limit in limits:
            traffic[source, destination] = (traffic.get((source, destination), (0, None))[0], limit)
        located_only = await session.scalar(
            select(exists().where(_live()).where(~exists().where(_live(), WorkerPresence.location_id.is_(None))))
        )
        return cls(
            {location_id: name for location_id, name, _ in locations},
            {location_id: country for location_id, _, country in locations},
            traffic,
            anywhere=not located_only,
        )

    def reach(self, storage: Storage) -> set[uuid.UUID]:
        """The locations whose workers reach ``storage`` directly."""
        if storage.reachable_from is None:
            if storage.storage_interface is StorageInterface.POSIX:
                return {storage.location_id}
            return set(self.names)
        if ANYWHERE in storage.reachable_from:
            return set(self.names)
        return {location_id for location_id, name in self.names.items() if name in storage.reachable_from}

    def cost(self, source: Storage, destination: Storage) -> tuple[bool, bool, float, int]:
        """How dear a copy from ``source`` to ``destination`` is, cheapest first: one some location's
        workers can carry before one none can; then not over a full link; then over the least loaded
        link; then by distance (the same location, the same country, elsewhere)."""
        placeable = self.anywhere or bool(self.reach(source) & self.reach(destination))
        if source.location_id == destination.location_id:
            return (not placeable, False, 0.0, 0)
        running, limit = self.traffic.get((source.location_id, destination.location_id), (0, None))
        full = limit is not None and running >= limit
        load = running / limit if limit else running / 1000
        country = self.countries.get(source.location_id)
        region = 1 if country is not None and country == self.countries.get(destination.location_id) else 2
        return (not placeable, full, load, region)


# --- presence and placement ------------------------------------------------------------------------


async def announce(session: AsyncSession, process: str, site: Site | None, copies: int) -> None:
    """This process runs ``copies`` copy workers at ``site`` (None: anywhere), as of now."""
    values = {"process": process, "location_id": site.location_id if site else None, "copies": copies}
    statement = insert(WorkerPresence).values(**values, last_seen=func.now())
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[WorkerPresence.process],
            set_={
                "location_id": statement.excluded.location_id,
                "copies": statement.excluded.copies,
                "last_seen": func.now(),
            },
        )
    )


async def withdraw(session: AsyncSession, process: str) -> None:
    await session.execute(delete(WorkerPresence).where(WorkerPresence.process == process))


def _live() -> ColumnElement[bool]:
    return and_(WorkerPresence.copies > 0, WorkerPresence.last_seen > func.now() - PRESENCE_TIMEOUT)


async def place_copies(session: AsyncSession) -> tuple[int, int]:
    """Say which queued copies no running worker can carry (unplaceable, with the reason, in their
    last_error) and take the word back from those one now can. Returns (newly unplaceable, placeable
    again). Nothing is said while no copy worker runs anywhere: then every copy waits alike. One
    process at a time looks (the others leave it to that one), and only where a worker with no
    location, which reaches everything, does not run."""
    if not await session.scalar(select(func.pg_try_advisory_xact_lock(PLACE_LOCK))):
        return 0, 0
    if not await session.scalar(select(exists().where(_live()))):
        return 0, 0
    anywhere = await session.scalar(select(exists().where(_live(), WorkerPresence.location_id.is_(None))))
    worker_location = aliased(Location)
    carrier = exists().where(
        _live(),
        or_(
            WorkerPresence.location_id.is_(None),
            select(worker_location.location_id)
            .where(
                worker_location.location_id == WorkerPresence.location_id,
                reachable(SOURCE, worker_location.location_id, worker_location.location_name),
                reachable(DESTINATION, worker_location.location_id, worker_location.location_name),
            )
            .correlate_except(worker_location)  # the copy's storages are the enclosing query's
            .exists(),
        ),
    )
    waiting = Migration.status == MigrationStatus.PENDING
    reason = (
        literal(UNPLACEABLE + "no running worker reaches both ")
        + SOURCE.storage_name
        + literal(" and ")
        + DESTINATION.storage_name
        + literal(" (start one with DLM_WORKER_LOCATION at a location that does, or set reachable_from)")
    )
    stranded = (
        []
        if anywhere
        else (
            await session.execute(
                joined_storages(select(Migration.migration_id, reason))
                .where(waiting, ~carrier, func.coalesce(Migration.last_error, "").not_like(UNPLACEABLE + "%"))
                .limit(PLACED_AT_ONCE)
            )
        ).all()
    )
    # One statement per pair of storages (the reason names them), not one per copy.
    by_reason: dict[str, list[int]] = {}
    for migration_id, why in stranded:
        by_reason.setdefault(why, []).append(migration_id)
    for why, ids in by_reason.items():
        await session.execute(update(Migration).where(Migration.migration_id.in_(ids)).values(last_error=why))
    if stranded:
        log.warning(
            "%d queued copies cannot be placed: no running worker reaches both of their storages", len(stranded)
        )
    freed = list(
        await session.scalars(
            joined_storages(select(Migration.migration_id))
            .where(waiting, carrier, Migration.last_error.like(UNPLACEABLE + "%"))
            .limit(PLACED_AT_ONCE)
        )
    )
    if freed:
        await session.execute(update(Migration).where(Migration.migration_id.in_(freed)).values(last_error=None))
    return len(stranded), len(freed)


# --- links -----------------------------------------------------------------------------------------


async def set_link(
    session: AsyncSession,
    *,
    source_location: str,
    destination_location: str,
    max_transfers: int | None,
    max_bytes_per_second: int | None,
) -> dict[str, Any]:
    """Limit the copies from one location to another; both limits None removes the link's row."""
    source = await find_site(session, source_location)
    destination = await find_site(session, destination_location)
    if source.location_id == destination.location_id:
        raise InvalidQueryParameters("destination_location: a link joins two different locations")
    key = (source.location_id, destination.location_id)
    if max_transfers is None and max_bytes_per_second is None:
        await session.execute(
            delete(LocationLink).where(
                LocationLink.source_location_id == key[0], LocationLink.destination_location_id == key[1]
            )
        )
    else:
        statement = insert(LocationLink).values(
            source_location_id=key[0],
            destination_location_id=key[1],
            max_transfers=max_transfers,
            max_bytes_per_second=max_bytes_per_second,
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[LocationLink.source_location_id, LocationLink.destination_location_id],
                set_={"max_transfers": max_transfers, "max_bytes_per_second": max_bytes_per_second},
            )
        )
    for link in await query_links(session):
        if (link["source_location"], link["destination_location"]) == (source_location, destination_location):
            return link
    return {
        "source_location": source_location,
        "destination_location": destination_location,
        "max_transfers": None,
        "max_bytes_per_second": None,
        "running": 0,
        "queued": 0,
    }


async def query_links(session: AsyncSession) -> list[dict[str, Any]]:
    """Every pair of locations that has a limit or carries copies now: its limits, the transfers under
    way on it and the copies queued for it."""
    source_location, destination_location = aliased(Location), aliased(Location)
    traffic = (
        joined_storages(
            select(
                SOURCE.location_id.label("source"),
                DESTINATION.location_id.label("destination"),
                func.count(distinct(Migration.lease_owner))
                .filter(Migration.status == MigrationStatus.RUNNING)
                .label("running"),
                func.count().filter(Migration.status == MigrationStatus.PENDING).label("queued"),
            )
        )
        .where(Migration.status.in_([MigrationStatus.PENDING, MigrationStatus.RUNNING]))
        .group_by(SOURCE.location_id, DESTINATION.location_id)
        .subquery()
    )
    pairs = select(LocationLink.source_location_id.label("source"), LocationLink.destination_location_id.label("destination")).union(
        select(traffic.c.source, traffic.c.destination).where(traffic.c.source != traffic.c.destination)
    ).subquery()  # fmt: skip
    rows = await session.execute(
        select(
            source_location.location_name,
            destination_location.location_name,
            LocationLink.max_transfers,
            LocationLink.max_bytes_per_second,
            func.coalesce(traffic.c.running, 0),
            func.coalesce(traffic.c.queued, 0),
        )
        .select_from(pairs)
        .join(source_location, source_location.location_id == pairs.c.source)
        .join(destination_location, destination_location.location_id == pairs.c.destination)
        .outerjoin(
            LocationLink,
            and_(
                LocationLink.source_location_id == pairs.c.source,
                LocationLink.destination_location_id == pairs.c.destination,
            ),
        )
        .outerjoin(traffic, and_(traffic.c.source == pairs.c.source, traffic.c.destination == pairs.c.destination))
        .order_by(source_location.location_name, destination_location.location_name)
    )
    return [
        {
            "source_location": source,
            "destination_location": destination,
            "max_transfers": max_transfers,
            "max_bytes_per_second": max_bytes,
            "running": int(running),
            "queued": int(queued),
        }
        for source, destination, max_transfers, max_bytes, running, queued in rows
    ]


async def query_workers(session: AsyncSession) -> list[dict[str, Any]]:
    """Each location's copy workers running now (location None: workers with none) and its queue: the
    copies waiting whose source is there."""
    rows = await session.execute(
        select(
            Location.location_name, func.count(), func.sum(WorkerPresence.copies), func.max(WorkerPresence.last_seen)
        )
        .select_from(WorkerPresence)
        .outerjoin(Location, Location.location_id == WorkerPresence.location_id)
        .where(_live())
        .group_by(Location.location_name)
    )
    found: dict[str | None, dict[str, Any]] = {
        name: {"location": name, "processes": int(processes), "copies": int(copies),
               "last_seen": last_seen.isoformat(), "queued": 0}
        for name, processes, copies, last_seen in rows
    }  # fmt: skip
    source_location = aliased(Location)
    queued = await session.execute(
        joined_storages(select(source_location.location_name, func.count()).select_from(Migration))
        .join(source_location, source_location.location_id == SOURCE.location_id)
        .where(Migration.status == MigrationStatus.PENDING)
        .group_by(source_location.location_name)
    )
    for name, count in queued:
        row = found.setdefault(name, {"location": name, "processes": 0, "copies": 0, "last_seen": None, "queued": 0})
        row["queued"] = int(count)
    return sorted(found.values(), key=lambda row: (row["location"] is not None, row["location"] or ""))
