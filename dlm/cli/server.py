"""`dlm serve` and `dlm db`: run the service and administer its database."""

import logging
import sys

import click
import msgspec

from dlm.cli.common import CLIError, database_url, load_settings, run


@click.command()
@click.option("--host", help="Interface to listen on (DLM_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (DLM_PORT, default 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the DLM service.

    With no DLM_DATABASE_URL, DLM starts an embedded PostgreSQL in its data directory (DLM_DATA_DIR),
    brings its schema up to date and creates a location `local` with a POSIX storage `local` there, so
    that files can be registered at once. Ctrl-C stops both.

    \b
    Examples:
      dlm serve
      dlm serve --port 9000
    """
    import uvicorn

    from dlm.app import create_app
    from dlm.serve import prepare

    settings = load_settings(host=host, port=port)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    embedded = None
    try:
        settings, embedded = run(lambda: prepare(settings))
        try:
            app = create_app(settings)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        click.echo(f"DLM serving on http://{settings.host}:{settings.port} (API docs at /schema)", err=True)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        if embedded is not None:
            embedded.stop()


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

    with database_url(load_settings(), create=True) as url:
        run(lambda: schema.upgrade(url, revision))
    click.echo(f"schema at {revision}")


@db.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Take the schema back to REVISION (`base` removes DLM's tables and their data)."""
    from dlm.db import schema

    with database_url(load_settings()) as url:
        run(lambda: schema.downgrade(url, revision))
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
