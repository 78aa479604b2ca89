"""Backups of DLM's database with PostgreSQL's own tools: ``pg_dump`` in its custom format, and
``pg_restore`` into an empty database (a new machine, or a new database beside the old one).

The embedded database is dumped with the tools that came with it (pgserver's); an external one with
the ``pg_dump`` on PATH (the operator's, matching their server), else pgserver's. The payloads are not
in the database, and the key that seals the storage configs is not in the dump: both are kept apart.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

from dlm.errors import DLMError, UnmetPreconditionForOperation


class BackupFailed(DLMError):
    status_code = 500


_PASSWORD = re.compile(r"^(?P<scheme>[^:/]+://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@")


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """DLM's database URL as libpq takes it (without SQLAlchemy's driver suffix) and the environment
    that goes with it: a password travels in PGPASSWORD, never on a command line others can list."""
    url = re.sub(r"^(postgres(?:ql)?)\+\w+://", r"\1://", url)
    environment = dict(os.environ)
    if (match := _PASSWORD.match(url)) is not None:
        environment["PGPASSWORD"] = urllib.parse.unquote(match["password"])
        url = f"{match['scheme']}{match['user']}@{url[match.end() :]}"
    return url, environment


def tools(name: str, *, embedded: bool) -> list[str]:
    """The ``pg_dump`` or ``pg_restore`` programs to try, in order: the embedded database's own first for
    it, the one on PATH first otherwise; the next is tried when one is too old for the server or dump."""
    bundled, installed = _bundled(name), shutil.which(name)
    found = [path for path in ((bundled, installed) if embedded else (installed, bundled)) if path]
    if not found:
        raise UnmetPreconditionForOperation(
            f"{name} is not installed: install PostgreSQL's client tools (e.g. apt-get install postgresql-client)"
        )
    return list(dict.fromkeys(found))


def _bundled(name: str) -> str | None:
    """The embedded database's own build of the program (found, not imported: importing pgserver
    starts looking for a runtime directory)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name
    return str(path) if path.is_file() else None


def dump(url: str, target: Path, *, embedded: bool) -> int:
    """Write the database at ``url`` to ``target`` (written whole or not at all); returns its size."""
    partial = target.with_name(f".{target.name}.partial")
    address, environment = libpq_target(url)
    arguments = ["--format=custom", "--no-owner", "--no-privileges", f"--file={partial}", address]
    _run(tools("pg_dump", embedded=embedded), arguments, environment, cleanup=partial)
    os.replace(partial, target)
    return target.stat().st_size


def restore(url: str, source: Path, *, embedded: bool) -> None:
    """Restore the dump ``source`` into the (empty) database at ``url``, in one transaction."""
    address, environment = libpq_target(url)
    arguments = ["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", f"--dbname={address}"]
    _run(tools("pg_restore", embedded=embedded), [*arguments, str(source)], environment)


# What a pg_dump older than the server, or a pg_restore older than the dump, says.
_TOO_OLD = ("version mismatch", "unsupported version")


def _run(programs: list[str], arguments: list[str], environment: dict[str, str], cleanup: Path | None = None) -> None:
    for program in programs:
        name = Path(program).name
        try:
            finished = subprocess.run(
                [program, *arguments], capture_output=True, text=True, timeout=24 * 3600, check=False, env=environment
            )
        except OSError as exc:
            raise BackupFailed(f"{name} could not run: {exc}") from None
        if finished.returncode == 0:
            return
        if cleanup is not None:
            cleanup.unlink(missing_ok=True)
        lines = [line for line in finished.stderr.splitlines() if line.strip()]
        if program != programs[-1] and any(words in finished.stderr for words in _TOO_OLD):
            continue
        raise BackupFailed(f"{name} failed: {lines[0] if lines else f'exit status {finished.returncode}'}")
