"""Run the lifecycle engines on their intervals inside a DLM process."""

import asyncio
import contextlib
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


# A nudged engine waits this long before its pass, for the work that came with the nudge to gather (a
# pipeline registering in many calls): a pass per burst, not per call.
NUDGE_DELAY = 0.2

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


def engines(settings: Settings, *, copies_queued: Callable[[], None] | None = None) -> dict[str, tuple[Pass, float]]:
    """Each engine's single pass, with the options the settings give it, and how often it runs
    (seconds; 0: not in this process). `dlm serve` and `dlm worker` both run the engines from here.
    ``copies_queued`` wakes this process's copy workers when a pass has queued copies."""
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
        "replication": functools.partial(replication.run_once, on_queued=copies_queued),
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
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        copies_queued: Callable[[], None] | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.copies_queued = copies_queued
        self.tasks: list[asyncio.Task[None]] = []
        self.last_passes: dict[str, LastPass] = {}
        self.nudged = {name: asyncio.Event() for name in INTERVALS}

    def start(self) -> None:
        for name, (run_once, interval) in engines(self.settings, copies_queued=self.copies_queued).items():
            if interval > 0:
                self.tasks.append(asyncio.create_task(self._loop(name, run_once, interval), name=f"dlm-{name}"))

    def nudge(self, name: str) -> None:
        """There is work for ``name`` now (items registered: replication): its next pass starts within
        NUDGE_DELAY, not at its interval, if this process runs it."""
        self.nudged[name].set()

    async def _rest(self, name: str, interval: float) -> None:
        """Until the next pass: the interval, or a nudge and a moment for the work to gather."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.nudged[name].wait(), interval)
            await asyncio.sleep(NUDGE_DELAY)
        self.nudged[name].clear()

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
            await self._rest(name, interval)


def actions(report: msgspec.Struct) -> int:
    """How much a pass did: the items in its report's lists and its counts (flags aside)."""
    done = 0
    for value in msgspec.structs.astuple(report):
        if isinstance(value, list | dict):
            done += len(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            done += value
    return done
