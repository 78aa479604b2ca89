"""Run the lifecycle engines on their intervals inside a DLM process."""

import asyncio
import datetime
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.config import Settings
from dlm.events.relay import Relay
from dlm.lifecycle import audit, capacity, expiry, replication
from dlm.observability import metrics
from dlm.request import delivery

log = logging.getLogger("dlm.lifecycle")

# A pass takes the sessionmaker, then any keyword arguments its engine accepts (now, dry_run, …).
Pass = Callable[..., Awaitable[Any]]


# Each engine's interval setting: 0 leaves that engine to other DLM processes.
INTERVALS = {
    "expiry": "expiry_interval_seconds",
    "replication": "replication_interval_seconds",
    "audit": "audit_interval_seconds",
    "capacity": "capacity_interval_seconds",
    "events": "events_interval_seconds",
    "deliveries": "deliveries_interval_seconds",
}


def without_background_work(settings: Settings) -> Settings:
    """The settings of a DLM process that only answers requests (`dlm serve --no-workers`): no copies,
    no engine; `dlm worker run` processes do that work."""
    return msgspec.structs.replace(settings, migration_workers=0, **dict.fromkeys(INTERVALS.values(), 0))


def engines(settings: Settings) -> dict[str, tuple[Pass, float]]:
    """Each engine's single pass, with the options the settings give it, and how often it runs
    (seconds; 0: not in this process). `dlm serve` and `dlm worker` both run the engines from here."""
    audit_pass = functools.partial(
        audit.run_once,
        max_bytes_per_second=settings.audit_max_bytes_per_second,
        recheck_after=datetime.timedelta(seconds=settings.audit_recheck_seconds),
    )
    capacity_pass = functools.partial(
        capacity.run_once,
        high_watermark=settings.capacity_high_watermark,
        low_watermark=settings.capacity_low_watermark,
    )
    passes: dict[str, Pass] = {
        "expiry": expiry.run_once,
        "replication": replication.run_once,
        "audit": audit_pass,
        "capacity": capacity_pass,
        # Delivering notifications is not a lifecycle engine, but it runs the same way.
        "events": Relay(settings).run_once,
        "deliveries": delivery.run_once,
    }
    intervals = {name: getattr(settings, field) for name, field in INTERVALS.items()}
    if not settings.event_sinks:
        intervals["events"] = 0
    return {name: (passes[name], intervals[name]) for name in INTERVALS}


class LastPass(msgspec.Struct, frozen=True):
    """What an engine's latest pass in this process said, for the operator page."""

    finished: datetime.datetime
    seconds: float
    ok: bool
    summary: str


class EngineLoops:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.tasks: list[asyncio.Task[None]] = []
        self.last_passes: dict[str, LastPass] = {}

    def start(self) -> None:
        for name, (run_once, interval) in engines(self.settings).items():
            if interval > 0:
                self.tasks.append(asyncio.create_task(self._loop(name, run_once, interval), name=f"dlm-{name}"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    async def _loop(self, name: str, run_once: Pass, interval: float) -> None:
        # What the last pass said: a line is logged when that changes, not every pass (a default set-up
        # with one storage would otherwise say "N unmet" every minute, a database outage repeat its
        # traceback every few seconds).
        last = ""
        while True:
            started = time.perf_counter()
            try:
                report = await run_once(self.sessionmaker)
                acted = actions(report)
                metrics.ENGINE_ACTIONS.labels(name).inc(acted)
                said = report.summary()
                if last.startswith("failed"):
                    log.info("%s pass: works again: %s", name, said)
                else:
                    # Nothing done, or what the last pass said: only when debugging.
                    log.log(logging.INFO if acted and said != last else logging.DEBUG, "%s pass: %s", name, said)
                last = said
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next pass may find the database or storage back
                metrics.ENGINE_PASS_ERRORS.labels(name).inc()
                failure = f"failed: {type(exc).__name__}: {exc}"
                if failure != last:
                    log.warning("%s pass failed (logged again when that changes)", name, exc_info=True)
                else:
                    log.debug("%s pass %s", name, failure)
                last = failure
            seconds = time.perf_counter() - started
            metrics.ENGINE_PASS_SECONDS.labels(name).observe(seconds)
            self.last_passes[name] = LastPass(
                finished=datetime.datetime.now(datetime.UTC),
                seconds=round(seconds, 3),
                ok=not last.startswith("failed"),
                summary=last,
            )
            await asyncio.sleep(interval)


def actions(report: msgspec.Struct) -> int:
    """How much a pass did: the items in its report's lists and its counts (flags aside)."""
    done = 0
    for value in msgspec.structs.astuple(report):
        if isinstance(value, list | dict):
            done += len(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            done += value
    return done
