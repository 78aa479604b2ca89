"""`dlm serve` and `dlm db`: run the service and administer its database."""

import errno
import signal
import socket
import sys
from pathlib import Path

import click
import msgspec

from dlm.cli.common import (
    CLIError,
    bound_malloc_arenas,
    database_url,
    freeze_what_is_loaded,
    in_database_transaction,
    load_settings,
    run,
    run_blocking,
)


@click.command()
@click.option("--host", help="Interface to listen on (DLM_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (DLM_PORT, default 8000).")
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve with no authentication even on a non-loopback address (DLM_AUTH=none): anyone who "
    "reaches DLM acts as admin. For isolated test set-ups only.",
)
@click.option(
    "--no-workers",
    is_flag=True,
    help="Answer requests only: run no copies and no lifecycle engine here (leave them to `dlm worker run`).",
)
def serve(host: str | None, port: int | None, insecure_no_auth: bool, no_workers: bool) -> None:
    """Run the DLM service.

    With no DLM_DATABASE_URL, DLM starts an embedded PostgreSQL in its data directory (DLM_DATA_DIR),
    brings its schema up to date and creates a location `local` with a POSIX storage `local` there, so
    that files can be registered at once. Ctrl-C stops both.

    With no tokens and no identity provider, DLM is open to whoever reaches it, and so serves only on a
    loopback address; see docs/security.md for tokens (`dlm token create`) and OIDC.

    \b
    Examples:
      dlm serve
      dlm serve --port 9000
      DLM_ADMIN_TOKEN=dlm_... dlm serve --host 0.0.0.0
      dlm serve --no-workers                 # API only; copies and engines in `dlm worker run`
    """
    import uvicorn

    from dlm.app import create_app
    from dlm.serve import Refused, prepare

    bound_malloc_arenas()
    settings = load_settings(host=host, port=port, auth="none" if insecure_no_auth else None)
    if no_workers:
        from dlm.lifecycle.loops import without_background_work

        settings = without_background_work(settings)
    from dlm.observability.logs import configure

    configure(settings.log_level, settings.log_format)
    _check_port_free(settings.host, settings.port)
    try:
        prepared = run(lambda: prepare(settings))
    except Refused as exc:
        raise CLIError(str(exc)) from None
    try:
        try:
            app = create_app(prepared.settings)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        address = f"http://{settings.host}:{settings.port}"
        if prepared.open:
            click.echo(
                f"dlm: warning: no authentication: anyone who can reach {address} acts as admin "
                "(docs/security.md: create a token to close it)",
                err=True,
            )
        click.echo(f"DLM serving on {address} (operator page at /ui, API docs at /schema)", err=True)
        # uvicorn stops gracefully on SIGTERM, then raises the signal again: with the default handler the
        # process would die on the spot, leaving the embedded database running. Leave through `finally`.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        freeze_what_is_loaded()
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        if prepared.embedded is not None:
            prepared.embedded.stop()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _check_port_free(host: str, port: int) -> None:
    """Say in one line that the port is taken, before announcing anything (uvicorn would log a traceback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
                raise CLIError(
                    f"{host} is not an address of this machine: pick --host (e.g. 0.0.0.0 for all of them)"
                ) from None
            reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise CLIError(f"port {port} on {host} {reason}: stop what listens there, or pick --port") from None


@click.group()
def db() -> None:
    """Manage DLM's database schema (Alembic revisions).

    Acts on DLM_DATABASE_URL, or else on the embedded database in DLM_DATA_DIR (even while
    `dlm serve` runs on it).
    """


@db.command()
@click.option("--revision", default="head", show_default=True, help="Revision to upgrade to.")
def upgrade(revision: str) -> None:
    """Bring the schema up to date.

    \b
    Example:
      DLM_DATABASE_URL=postgresql://postgres@127.0.0.1/dlm dlm db upgrade
    """
    from dlm.db import schema

    settings = load_settings()
    with database_url(settings, create=True) as url:
        run(lambda: schema.upgrade(url, revision, ska_schema=settings.ska_schema))
    click.echo(f"schema at {revision}")


@db.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Take the schema back to REVISION (`base` removes DLM's tables and their data)."""
    from dlm.db import schema

    settings = load_settings()
    with database_url(settings) as url:
        run(lambda: schema.downgrade(url, revision, ska_schema=settings.ska_schema))
    click.echo(f"schema at {revision}")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def current(as_json: bool) -> None:
    """Show the schema revision of the database and the one this DLM needs."""
    from dlm.db import schema
    from dlm.db.engine import create_engine

    async def read(url: str) -> str | None:
        engine = create_engine(url, pool_size=1)
        try:
            return await schema.current_revision(engine)
        finally:
            await engine.dispose()

    with database_url(load_settings()) as url:
        revision = run(lambda: read(url))
    head = schema.head_revision()
    if as_json:
        click.echo(msgspec.json.encode({"current": revision, "head": head, "up_to_date": revision == head}))
    else:
        click.echo(f"current: {revision or '(none)'}\nhead:    {head}")
    if revision != head:
        sys.exit(3)


@db.command()
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
def backup(target: Path) -> None:
    """Write DLM's database to TARGET, a new file (pg_dump's custom format).

    Works while DLM runs. The dump holds every item, replica, copy, token and storage config, but not
    the key that seals the configs (DLM_SECRET_KEY, or secret.key in the data directory): keep that
    apart. Restore with `dlm db restore`.

    \b
    Example:
      dlm db backup /backups/dlm-$(date +%F).dump
    """
    from dlm.db.backup import dump

    if target.exists():
        raise CLIError(f"{target} exists already: name a new file")
    if not target.parent.is_dir():
        raise CLIError(f"{target.parent} is not a directory")
    settings = load_settings()
    with database_url(settings) as url:
        size = run_blocking(lambda: dump(url, target, embedded=settings.embedded))
    click.echo(f"wrote {target} ({size:,} bytes)")
    if settings.secret_key:
        key = str(settings.secret_key_file) if settings.secret_key_file.is_file() else "DLM_SECRET_KEY"
        click.echo(f"its storage configs are sealed with the key in {key}: keep a copy of it apart from the dump")


@db.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def restore(source: Path) -> None:
    """Restore a dump made by `dlm db backup` into an empty database.

    The database is DLM_DATABASE_URL's, or else the embedded one in DLM_DATA_DIR (created if need
    be): a new machine, or a new database beside the old one. It must hold no DLM tables yet. Give
    this DLM the backed-up deployment's key (DLM_SECRET_KEY) before it starts.

    \b
    Example:
      DLM_SECRET_KEY=... dlm db restore /backups/dlm-2026-12-04.dump
    """
    from sqlalchemy import inspect as sa_inspect

    from dlm.db import schema
    from dlm.db.backup import restore as restore_dump
    from dlm.db.engine import create_engine
    from dlm.serve import Refused, check_secret_key

    settings = load_settings()

    async def revision_of(url: str) -> tuple[str | None, bool]:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as connection:
                tables = await connection.run_sync(lambda sync: sa_inspect(sync).get_table_names())
            return await schema.current_revision(engine), "data_item" in tables
        finally:
            await engine.dispose()

    with database_url(settings, create=True) as url:
        _, has_tables = run(lambda: revision_of(url))
        if has_tables:
            raise CLIError("the database already holds DLM's tables: restore into a new, empty database")
        run_blocking(lambda: restore_dump(url, source, embedded=settings.embedded))
        revision, _ = run(lambda: revision_of(url))
    click.echo(f"restored {source} (schema at {revision or '(none)'})")
    if revision != schema.head_revision():
        click.echo("the schema is older than this DLM's: run `dlm db upgrade` before `dlm serve`")
        return
    try:
        in_database_transaction(lambda session: check_secret_key(session, settings), actor="dlm db restore")
    except Refused as exc:
        click.echo(f"dlm: warning: {exc}", err=True)


@db.command("reseal-configs")
def reseal_configs() -> None:
    """Encrypt every stored storage config with the first key of DLM_SECRET_KEY.

    Also seals configs stored before DLM_SECRET_KEY was set. To rotate: put a new key first
    (DLM_SECRET_KEY=new,old), restart DLM, run this, then drop the old key.

    \b
    Example:
      DLM_SECRET_KEY=$(dlm db new-secret-key),$DLM_SECRET_KEY dlm db reseal-configs
    """
    from dlm.storage.service import reseal_configs as reseal

    changed = in_database_transaction(reseal, actor="dlm db reseal-configs")
    click.echo(f"sealed {changed} storage config(s) with the first key of DLM_SECRET_KEY")


@db.command("import-ska")
@click.option("--source", "source_url", required=True, help="The SKA-DLM database, postgresql://user@host/db.")
@click.option("--source-schema", default="dlm", show_default=True, help="The schema of SKA-DLM's tables.")
@click.option("--dry-run", is_flag=True, help="Say what would be imported and updated; write nothing.")
def import_ska(source_url: str, source_schema: str, dry_run: bool) -> None:
    """Copy an SKA-DLM database's locations, storages, configs, data items and migrations into DLM.

    Ids, versions, states, phases, expirations and metadata are kept. Running it again (a rehearsal,
    then the cut-over) imports what is new and brings over what changed in SKA-DLM since the last
    run (tags, metadata, states, expiries, owners) where DLM left it alone; rows changed on both
    sides stay as DLM has them and are listed. What cannot come over is listed with the reason. One
    transaction: all or nothing. The source is only read.

    \b
    Example:
      dlm db import-ska --source postgresql://ska_dlm_admin@dlm-db:5432/ska_dlm
    """
    from dlm.ska.importer import import_ska as run_import

    report = in_database_transaction(
        lambda session: run_import(session, source_url, source_schema, dry_run=dry_run), actor="dlm db import-ska"
    )
    click.echo(report.summary())


@db.command("new-secret-key")
def new_secret_key() -> None:
    """Print a new key for DLM_SECRET_KEY (Fernet: 32 random bytes, url-safe base64)."""
    from dlm.storage.configs import new_key

    click.echo(new_key())
