"""The zero-setup default: a PostgreSQL server (the pgserver package) living in DLM's data directory."""

import logging
import os
import warnings
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger("dlm.embedded")
DATABASE_NAME = "dlm"


class EmbeddedPostgres:
    """Starts (or reuses) the server on construction; ``stop()`` shuts it down."""

    def __init__(self, pgdata: Path) -> None:
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes, so hush it.
        os.environ.setdefault("XDG_RUNTIME_DIR", str(pgdata.parent / "run"))
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", pgdata)
        self._server = pgserver.get_server(pgdata, cleanup_mode="stop")
        if DATABASE_NAME not in self._server.psql("SELECT datname FROM pg_database;"):
            self._server.psql(f"CREATE DATABASE {DATABASE_NAME};")

    @property
    def database_url(self) -> str:
        return make_url(self._server.get_uri()).set(database=DATABASE_NAME).render_as_string(hide_password=False)

    def stop(self) -> None:
        self._server.cleanup()
