import os
import subprocess
import sys

import pytest

from dlm.db import schema


def dlm(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    return subprocess.run(
        [sys.executable, "-m", "dlm", *args], env={**environment, **env}, capture_output=True, text=True, timeout=120
    )


def test_db_current_and_upgrade(empty_database_url: str) -> None:
    behind = dlm("db", "current", DLM_DATABASE_URL=empty_database_url)
    assert behind.returncode == 3 and "(none)" in behind.stdout
    upgraded = dlm("db", "upgrade", DLM_DATABASE_URL=empty_database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    current = dlm("db", "current", "--json", DLM_DATABASE_URL=empty_database_url)
    assert current.returncode == 0
    assert f'"current":"{schema.head_revision()}"' in current.stdout


def test_skas_database_variable_with_its_driver_is_the_database_used(empty_database_url: str, tmp_path) -> None:
    # SKA-DLM's deployments set DATABASE_URL=postgresql+asyncpg://...: never an embedded database instead.
    ska_url = empty_database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    upgraded = dlm("db", "upgrade", DATABASE_URL=ska_url, DLM_DATA_DIR=str(tmp_path))
    assert upgraded.returncode == 0, upgraded.stderr
    current = dlm("db", "current", "--json", DLM_DATABASE_URL=empty_database_url)
    assert f'"current":"{schema.head_revision()}"' in current.stdout
    assert not (tmp_path / "postgres").exists() and not any(tmp_path.iterdir()), "no embedded database made"


def test_serve_refuses_a_schema_that_is_behind_with_one_line(empty_database_url: str) -> None:
    result = dlm("serve", DLM_DATABASE_URL=empty_database_url, DLM_PORT="8799")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "dlm: error: the database has no DLM schema; run `dlm db upgrade` first"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["serve"], {"DLM_PORT": "eighty"}, "DLM_PORT"),
        (["serve"], {"DLM_PORT": "70000"}, "DLM_PORT"),
        (["db", "current"], {"DLM_DATA_DIR": "/nonexistent/dlm-home"}, "run `dlm serve` once"),
        (["worker", "expiry", "--once"], {"DLM_DATA_DIR": "/nonexistent/dlm-home"}, "DLM_DATABASE_URL"),
        (["db", "current"], {"DLM_DATABASE_URL": "mysql://x@y/z"}, "PostgreSQL"),
        (["db", "current"], {"DLM_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, "unreachable"),
        # An address this machine does not have (TEST-NET-1): the --host is at fault, not the port.
        (["serve", "--host", "192.0.2.1"], {}, "192.0.2.1 is not an address of this machine: pick --host"),
        (["token", "create", "t", "--role", "reader", "--expires", "90x"], {}, "neither a duration from now (90d"),
        (
            ["serve"],
            {"DLM_ADMIN_TOKEN": "dlm_replace-me-with-64-random-hex-characters-from-openssl-rand"},
            "placeholder",
        ),
    ],
)
def test_cli_errors_are_one_readable_line(args: list[str], env: dict[str, str], message: str) -> None:
    result = dlm(*args, **env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm: error:") and message in lines[0], result.stderr


def test_help_has_examples() -> None:
    for args in (["--help"], ["serve", "--help"], ["db", "upgrade", "--help"]):
        result = dlm(*args)
        assert result.returncode == 0 and "dlm" in result.stdout
    assert "Examples" in dlm("serve", "--help").stdout


@pytest.mark.parametrize(
    ("args", "summary"),
    [
        (["expiry", "--once", "--dry-run"], "would delete 0"),
        (["replication", "--once", "--dry-run"], "would queue 0 copies"),
        (["audit", "--once", "--limit", "5", "--dark-data"], "checked 0"),
        (["capacity", "--once", "--dry-run"], "would evict 0 replicas"),
    ],
)
def test_every_worker_command_runs_a_pass(database_url: str, args: list[str], summary: str) -> None:
    result = dlm("worker", *args, DLM_DATABASE_URL=database_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(summary), result.stdout


def test_the_cli_and_the_client_load_no_server_stack() -> None:
    """`dlm request …` and `from dlm.client import DLMClient` talk HTTP: they must start fast, so they
    import neither the database stack, nor the S3 stack, nor an HTTP library beyond the standard one
    (bench/cli_startup.py measures the time)."""
    import subprocess
    import sys

    probe = (
        "import sys, dlm.cli, dlm.client\n"
        "heavy = {'sqlalchemy', 'asyncpg', 'aioboto3', 'botocore', 'litestar', 'httpx', 'asyncio', 'uvicorn'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_the_audit_offers_no_dry_run_it_would_not_honour() -> None:
    from click.testing import CliRunner

    from dlm.cli import main

    help_text = CliRunner().invoke(main, ["worker", "audit", "--help"]).output
    assert "There is no --dry-run" in help_text and "  --dry-run" not in help_text.split("Options:")[1]
    refused = CliRunner().invoke(main, ["worker", "audit", "--dry-run"])
    assert refused.exit_code == 2 and "No such option" in refused.output
