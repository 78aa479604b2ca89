"""`dlm worker <engine>`: run a lifecycle engine against the database, once or on its interval."""

import datetime
from typing import Any

import click
import msgspec

from dlm.cli.common import CLIError, bound_malloc_arenas, database_url, freeze_what_is_loaded, load_settings, run
from dlm.errors import DLMError
from dlm.parsing import parse_datetime


@click.group()
def worker() -> None:
    """Run a lifecycle engine from here instead of (or as well as) inside `dlm serve`.

    Works on DLM_DATABASE_URL, or else on the embedded database in DLM_DATA_DIR (the one `dlm serve`
    uses). Any number of workers and servers may run the same engine at once: they never do the same
    work twice.
    """


def engine_options(*, dry_run: bool = True) -> Any:
    """The options every engine command takes; ``--dry-run`` only where a pass changes something."""
    options = [
        click.option("--once", is_flag=True, help="One pass, then exit (default: a pass every interval)."),
        click.option("--dry-run", is_flag=True, help="Report what the pass would do; change nothing.")
        if dry_run
        else None,
        click.option("--now", "now_text", help="Act as if it were this time (ISO 8601)."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
    ]

    def decorate(function: Any) -> Any:
        for option in reversed([option for option in options if option is not None]):
            function = option(function)
        return function

    return decorate


@worker.command("expiry")
@engine_options()
def expiry_command(once: bool, dry_run: bool, now_text: str | None, as_json: bool) -> None:
    """Delete the payloads of expired replicas and items; keep those the item still needs.

    \b
    Examples:
      dlm worker expiry --once --dry-run
      dlm worker expiry --once --now 2027-01-01 --dry-run --json
      dlm worker expiry                      # a pass every DLM_EXPIRY_INTERVAL_SECONDS
    """
    _run_engine("expiry", once=once, as_json=as_json, now=_parse_now(now_text), dry_run=dry_run)


@worker.command("replication")
@engine_options()
def replication_command(once: bool, dry_run: bool, now_text: str | None, as_json: bool) -> None:
    """Queue the copies that bring items up to their target phase; replace corrupted replicas.

    \b
    Examples:
      dlm worker replication --once --dry-run     # which copies would be made, and where
      dlm worker replication                      # a pass every DLM_REPLICATION_INTERVAL_SECONDS
    """
    _run_engine("replication", once=once, as_json=as_json, now=_parse_now(now_text), dry_run=dry_run)


@worker.command("audit")
@engine_options(dry_run=False)
@click.option("--limit", type=int, help="Check at most this many replicas.")
@click.option(
    "--dark-data",
    is_flag=True,
    help="Also list payloads on the storages that DLM does not know (never touched), and partial files of "
    "copies that will never finish (removed after a day).",
)
def audit_command(once: bool, now_text: str | None, as_json: bool, limit: int | None, dark_data: bool) -> None:
    """Verify replicas' presence, size and checksum at a bounded rate; mark failures CORRUPTED.

    There is no --dry-run: the audit only reads payloads and never deletes one (--dark-data lists
    unknown payloads, it does not remove them; it removes only partial files no copy will finish,
    once a day old); marking what it finds CORRUPTED is its purpose.

    \b
    Examples:
      dlm worker audit --once --limit 1000
      dlm worker audit --once --dark-data --json
    """
    _run_engine("audit", once=once, as_json=as_json, now=_parse_now(now_text), limit=limit, dark_data=dark_data)


@worker.command("capacity")
@engine_options()
def capacity_command(once: bool, dry_run: bool, now_text: str | None, as_json: bool) -> None:
    """Evict replicas their items can spare, least recently used first, from storages above the high
    watermark (DLM_CAPACITY_HIGH_WATERMARK) down to the low one.

    \b
    Examples:
      dlm worker capacity --once --dry-run       # what would be evicted, and which storages stay full
    """
    _run_engine("capacity", once=once, as_json=as_json, now=_parse_now(now_text), dry_run=dry_run)


@worker.command("events")
@click.option("--once", is_flag=True, help="Deliver what is due, then exit (default: every interval).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def events_command(once: bool, as_json: bool) -> None:
    """Deliver notifications to RabbitMQ (DLM_AMQP_URL) and webhooks (DLM_WEBHOOKS), at least once.

    \b
    Examples:
      dlm worker events --once
      dlm worker events                      # every DLM_EVENTS_INTERVAL_SECONDS
    """
    if not load_settings().event_sinks:
        raise CLIError("no sink is configured: set DLM_AMQP_URL or DLM_WEBHOOKS")
    _run_engine("events", once=once, as_json=as_json)


@worker.command("run")
@click.option(
    "--engines",
    "names",
    help="Comma-separated engines to run (expiry, replication, audit, capacity, events, deliveries); "
    "default: every engine whose interval is not 0.",
)
@click.option("--copies", type=click.IntRange(0, 64), help="Copies to run at once (DLM_MIGRATION_WORKERS).")
@click.option(
    "--location",
    help="The location this worker runs at (DLM_WORKER_LOCATION): it takes only the copies whose two storages "
    "it reaches from there, its own location's sources first.",
)
def run_command(names: str | None, copies: int | None, location: str | None) -> None:
    """Run copies and lifecycle engines until stopped (Ctrl-C or SIGTERM), beside any number of
    `dlm serve --no-workers` API processes and other workers: a copy or a pass is claimed in the
    database, so none is done twice. A stopped worker hands its copies back to the queue.

    \b
    Examples:
      dlm worker run                                  # every engine, DLM_MIGRATION_WORKERS copies
      dlm worker run --copies 8 --engines replication
      dlm worker run --copies 0 --engines expiry,audit,capacity
      dlm worker run --location perth                 # copies from and to what Perth reaches
    """
    from dlm.lifecycle.loops import INTERVALS

    overrides: dict[str, Any] = {} if copies is None else {"migration_workers": copies}
    if location is not None:
        overrides["worker_location"] = location
    if names is not None:
        chosen = {name.strip() for name in names.split(",") if name.strip()}
        if unknown := sorted(chosen - INTERVALS.keys()):
            raise CLIError(f"--engines: no engine {', '.join(unknown)}; there are {', '.join(INTERVALS)}")
        overrides.update({INTERVALS[name]: 0 for name in INTERVALS if name not in chosen})
    bound_malloc_arenas()
    settings = load_settings(**overrides)
    from dlm.lifecycle.loops import engines
    from dlm.observability.logs import configure

    configure(settings.log_level, settings.log_format)
    running = [name for name, (_, interval) in engines(settings).items() if interval > 0]
    if names is not None and (idle := sorted(chosen - set(running))):
        raise CLIError(f"--engines: {', '.join(idle)} would not run: its interval is 0 (or, for events, no sink)")
    if not running and settings.migration_workers == 0:
        raise CLIError("nothing to run: no copies (--copies 0) and no engine")
    where = f" at {settings.worker_location}" if settings.worker_location else ""
    click.echo(
        f"dlm worker: {settings.migration_workers} copies at once{where}; engines: {', '.join(running) or 'none'}",
        err=True,
    )
    with database_url(settings) as url:
        freeze_what_is_loaded()
        run(lambda: _work_until_stopped(url, settings))


async def _work_until_stopped(url: str, settings: Any) -> None:
    import asyncio
    import signal

    from dlm.db.engine import create_engine, create_sessionmaker
    from dlm.db.schema import check_schema
    from dlm.lifecycle.loops import EngineLoops
    from dlm.migration.worker import MigrationWorkers
    from dlm.storage.context import session_info

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    engine = create_engine(url, pool_size=max(2, settings.migration_workers + 2))
    try:
        await check_schema(engine)
        sessionmaker = create_sessionmaker(engine, info=session_info(settings))
        if settings.worker_location and settings.migration_workers:
            from dlm.db.engine import transaction
            from dlm.errors import DLMError
            from dlm.sites.service import find_site

            try:
                async with transaction(sessionmaker, actor="worker") as session:
                    await find_site(session, settings.worker_location)
            except DLMError as exc:
                raise CLIError(f"--location: {exc.message}") from None
        copies = MigrationWorkers(sessionmaker, settings)
        lifecycle = EngineLoops(sessionmaker, settings, copies_queued=copies.wake)
        copies.start()
        lifecycle.start()
        try:
            await stop.wait()
        finally:
            await lifecycle.stop()
            await copies.stop()  # a copy under way is handed back to the queue
    finally:
        await engine.dispose()


def _parse_now(text: str | None) -> datetime.datetime | None:
    if text is None:
        return None
    try:
        return parse_datetime(text, "--now")
    except DLMError as exc:
        raise CLIError(exc.message) from None


def _run_engine(name: str, *, once: bool, as_json: bool, **arguments: Any) -> None:
    """Run engine ``name`` as `dlm serve` would (its settings-derived options and interval, from
    ``engines``), with this command's ``arguments`` added to each pass."""
    from dlm.db.engine import create_engine, create_sessionmaker
    from dlm.db.schema import check_schema
    from dlm.lifecycle.loops import engines
    from dlm.storage.context import session_info

    settings = load_settings()
    run_once, interval = engines(settings)[name]
    from dlm.observability.logs import configure

    configure(settings.log_level, settings.log_format)

    import asyncio

    async def passes(url: str) -> Any:
        engine = create_engine(url, pool_size=2)
        try:
            await check_schema(engine)
            sessionmaker = create_sessionmaker(engine, info=session_info(settings))
            while True:
                report = await run_once(sessionmaker, **arguments)
                if once:
                    return report
                click.echo(report.summary(), err=True)
                await asyncio.sleep(interval or 60)
        finally:
            await engine.dispose()

    with database_url(settings) as url:
        report = run(lambda: passes(url))
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
        return
    click.echo(report.summary())
    for field in msgspec.structs.fields(report):
        entries = getattr(report, field.name)
        if isinstance(entries, list) and entries and isinstance(entries[0], msgspec.Struct):
            for entry in entries:
                details = ", ".join(f"{key}={value}" for key, value in msgspec.structs.asdict(entry).items())
                click.echo(f"{field.name}: {details}")
