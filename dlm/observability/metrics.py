"""Prometheus metrics: what this process did (counters and histograms, as it happens) and what the
database holds (gauges, read by one set of cheap queries at most every few seconds, so that scraping
never loads the database). Each DLM process exposes its own; Prometheus adds them up.

Names follow Prometheus conventions: ``dlm_…_total`` for counters, ``_seconds`` and ``_bytes`` units.
"""

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dlm.db import tally
from dlm.db.engine import transaction
from dlm.db.models import Migration, Storage
from dlm.enums import ItemState, MigrationStatus
from dlm.sites import service as sites

# Litestar adds "; charset=utf-8" to a text type.
CONTENT_TYPE = "text/plain; version=0.0.4"
# Database gauges are read at most this often.
CACHE_SECONDS = 5.0

REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "dlm_http_requests_total",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "dlm_http_request_duration_seconds",
    "Time to answer an HTTP request (to the first byte of a streamed body), by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
COPIED_BYTES = Counter("dlm_copied_bytes_total", "Bytes copied by migrations that succeeded.", registry=REGISTRY)
COPIED_THROUGH = Counter(
    "dlm_copied_bytes_through_total",
    "Of the bytes copied, those that passed through this process (a copy inside one S3 service: none).",
    registry=REGISTRY,
)
COPIES = Counter("dlm_copies_total", "Migrations this process finished, by outcome.", ["status"], registry=REGISTRY)
COPY_SECONDS = Histogram(
    "dlm_copy_duration_seconds",
    "Time a successful copy took (read, write, verify).",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200),
    registry=REGISTRY,
)
RETRIEVED_BYTES = Counter("dlm_retrieved_bytes_total", "Payload bytes sent to downloads.", registry=REGISTRY)
ENGINE_PASS_SECONDS = Histogram(
    "dlm_engine_pass_duration_seconds",
    "Time an engine's pass took.",
    ["engine"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300),
    registry=REGISTRY,
)
ENGINE_PASS_ERRORS = Counter(
    "dlm_engine_pass_errors_total", "Engine passes that failed.", ["engine"], registry=REGISTRY
)
LINK_BYTES = Counter(
    "dlm_link_copied_bytes_total",
    "Bytes this process copied, by the locations they went from and to.",
    ["source_location", "destination_location"],
    registry=REGISTRY,
)
ENGINE_ACTIONS = Counter(
    "dlm_engine_actions_total", "What engine passes did (items handled), by engine.", ["engine"], registry=REGISTRY
)


class DatabaseGauges(Collector):
    """Gauges read from the database by ``refresh`` (awaited before each scrape), served from memory."""

    def __init__(self) -> None:
        self.families: list[Any] = []
        self.read_at = 0.0
        self.engine: AsyncEngine | None = None  # whose database the families describe

    def collect(self) -> Iterator[Any]:
        yield from self.families

    async def refresh(self, sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine) -> None:
        if engine is self.engine and time.monotonic() - self.read_at < CACHE_SECONDS:
            return
        families = []
        async with transaction(sessionmaker, actor="metrics") as session:
            items = GaugeMetricFamily("dlm_items", "Replicas by state.", labels=["state"])
            await tally.fold(session)
            counted = await tally.replicas_by_state(session)
            for state in ItemState:
                items.add_metric([state.value], counted.get(state, 0))
            families.append(items)

            migrations = GaugeMetricFamily("dlm_migrations", "Migrations by status.", labels=["status"])
            by_status = await tally.migrations_by_status(session)
            for status in MigrationStatus:
                migrations.add_metric([status.value], by_status.get(status, 0))
            families.append(migrations)
            oldest = await session.scalar(
                select(func.extract("epoch", func.now() - func.min(Migration.next_attempt_at))).where(
                    Migration.status == MigrationStatus.PENDING, Migration.next_attempt_at <= func.now()
                )
            )
            families.append(
                GaugeMetricFamily(
                    "dlm_migration_oldest_due_seconds",
                    "How long the oldest copy that is due has waited for a worker (0: none waits).",
                    value=float(oldest or 0),
                )
            )

            used = GaugeMetricFamily("dlm_storage_used_bytes", "Bytes DLM holds on a storage.", labels=["storage"])
            replicas = GaugeMetricFamily("dlm_storage_replicas", "Live replicas on a storage.", labels=["storage"])
            capacity = GaugeMetricFamily(
                "dlm_storage_capacity_bytes",
                "A storage's capacity (storages without one are left out).",
                labels=["storage"],
            )
            storages = (
                await session.execute(
                    select(Storage.storage_id, Storage.storage_name, Storage.storage_capacity).where(
                        Storage.storage_retired.is_(False)
                    )
                )
            ).all()
            held = await tally.held_by_storage(session, [storage_id for storage_id, _, _ in storages])
            for storage_id, name, limit in storages:
                size, count = held.get(storage_id, (0, 0))
                used.add_metric([name], float(size))
                replicas.add_metric([name], float(count))
                if limit is not None and limit >= 0:
                    capacity.add_metric([name], float(limit))
            families += [used, replicas, capacity]
            families += await _site_families(session)
        pool: Any = engine.pool
        checked_out = GaugeMetricFamily("dlm_db_connections_in_use", "Database connections of this process in use.")
        checked_out.add_metric([], float(getattr(pool, "checkedout", lambda: 0)()))
        families.append(checked_out)
        self.families = families
        self.read_at = time.monotonic()
        self.engine = engine


async def _site_families(session: AsyncSession) -> list[Any]:
    """Where copy workers run, what each link between locations carries and waits for, and the copies
    no running worker can reach (dlm.sites)."""
    workers = GaugeMetricFamily(
        "dlm_site_workers", "Copy workers running now, by location ('*': workers with none).", labels=["location"]
    )
    queued = GaugeMetricFamily(
        "dlm_site_queued_copies", "Copies waiting whose source is at a location.", labels=["location"]
    )
    for row in await sites.query_workers(session):
        if row["processes"]:
            workers.add_metric([row["location"] or "*"], float(row["copies"]))
        if row["location"] is not None:
            queued.add_metric([row["location"]], float(row["queued"]))
    labels = ["source_location", "destination_location"]
    running = GaugeMetricFamily("dlm_link_transfers", "Transfers under way on a link between locations.", labels=labels)
    link_queued = GaugeMetricFamily(
        "dlm_link_queued_copies", "Copies queued for a link between locations.", labels=labels
    )
    limit = GaugeMetricFamily(
        "dlm_link_max_transfers", "A link's limit on transfers at once (links without one left out).", labels=labels
    )
    for link in await sites.query_links(session):
        pair = [link["source_location"], link["destination_location"]]
        running.add_metric(pair, float(link["running"]))
        link_queued.add_metric(pair, float(link["queued"]))
        if link["max_transfers"] is not None:
            limit.add_metric(pair, float(link["max_transfers"]))
    unplaceable = GaugeMetricFamily(
        "dlm_copies_unplaceable",
        "Queued copies no running copy worker can reach (both storages from its location).",
        value=float(await sites.unplaceable_copies(session)),
    )
    return [workers, queued, running, link_queued, limit, unplaceable]


DATABASE = DatabaseGauges()
REGISTRY.register(DATABASE)


async def render(sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine) -> bytes:
    await DATABASE.refresh(sessionmaker, engine)
    return generate_latest(REGISTRY)
