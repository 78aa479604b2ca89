"""The zero-setup default: a PostgreSQL server (the pgserver package) living in DLM's data directory."""

import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

from sqlalchemy.engine import make_url

from dlm.errors import ServiceUnavailable

log = logging.getLogger("dlm.embedded")
DATABASE_NAME = "dlm"
# pgserver's list of the processes holding the server (stopped when the last one lets go).
HOLDERS_FILE = ".handle_pids.json"


class EmbeddedPostgres:
    """Starts (or reuses) the server on construction; ``stop()`` shuts it down."""

    def __init__(self, pgdata: Path) -> None:
        pgserver = _import_pgserver()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_holders(pgdata)
        log.info("starting embedded PostgreSQL in %s", pgdata)
        try:
            self._server = pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:  # pgserver reports a failed start with several exception types
            raise ServiceUnavailable(f"cannot start the embedded PostgreSQL in {pgdata}: {exc}") from exc
        if DATABASE_NAME not in self._server.psql("SELECT datname FROM pg_database;"):
            self._server.psql(f"CREATE DATABASE {DATABASE_NAME};")

    @property
    def database_url(self) -> str:
        return make_url(self._server.get_uri()).set(database=DATABASE_NAME).render_as_string(hide_password=False)

    def stop(self) -> None:
        self._server.cleanup()


def _import_pgserver() -> ModuleType:
    """pgserver puts the server's Unix socket in the data directory, or else in XDG_RUNTIME_DIR, read
    once when it is imported; a socket path must stay under ~100 bytes, so when XDG_RUNTIME_DIR is unset
    (containers, CI) it gets a short private directory of ours for that import only. Left set, it would
    reach every program this process starts (a tool run as another user cannot write there)."""
    if "pgserver" in sys.modules:
        return sys.modules["pgserver"]
    unset = "XDG_RUNTIME_DIR" not in os.environ
    if unset:
        os.environ["XDG_RUNTIME_DIR"] = os.path.join(tempfile.gettempdir(), f"dlm-run-{os.getuid()}")
    try:
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR being unset
            import pgserver
    finally:
        if unset:
            del os.environ["XDG_RUNTIME_DIR"]
    return pgserver


def _forget_dead_holders(pgdata: Path) -> None:
    """pgserver stops the server when the last process holding it lets go, and lists the holders in
    a file. A DLM killed with SIGKILL never lets go, so its entry would keep the server alive for
    good: drop the entries of processes that no longer exist."""
    holders = pgdata / HOLDERS_FILE
    try:
        pids = json.loads(holders.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        log.info("embedded PostgreSQL: forgetting holders that died without letting go: %s", set(pids) - set(alive))
        holders.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
