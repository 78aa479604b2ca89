"""A pytest plugin that runs SKA-DLM's own ``tests/integration`` against a live ``dlm serve``, adapting
only their environment, as SKA's docker and k8s environments (its ``tests/common_*.py``) do:

- the ``env`` fixture is SKA's docker client pointed at DLM's URL, with the shared volume that SKA's
  tests write into (``/dlm/...``, the rclone container's file system) mounted below DLM_HARNESS_VOLUME;
- SKA's library reaches its database through PostgREST (``ska_dlm.dlm_db.db_access.DB``): here the same
  calls run as SQL on DLM's database, on the views of schema ``dlm`` (SKA's tables as DLM keeps them),
  and the tests' clean-up ("delete every migration and item") empties DLM's item tables;
- the storage daemon's functions the tests call directly (``delete_data_item_payload``, ``delete_uids``:
  "not a client endpoint", as the tests say) are DLM's: its delete_data_item_payload route and one pass
  of its expiry engine (``dlm worker expiry --once``).

Loaded with ``-p dlm_ska_harness --noconftest`` instead of SKA's conftest (which builds docker and
kubernetes clients). Nothing of SKA's is changed.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests

DLM_URL = os.environ["DLM_HARNESS_URL"]
WORKER_ENVIRONMENT = json.loads(os.environ["DLM_HARNESS_WORKER_ENVIRONMENT"])
CONNECT = json.loads(os.environ["DLM_HARNESS_ASYNCPG"])  # asyncpg.connect's arguments for it
VOLUME = Path(os.environ["DLM_HARNESS_VOLUME"])

# PostgREST's filter operators that SKA's library uses.
OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def pytest_addoption(parser: pytest.Parser) -> None:
    # SKA's conftest defines these; its fixtures read them.
    parser.addoption("--env", action="store", default="docker")
    parser.addoption("--auth", action="store", default="")  # any text is "use OAuth"; DLM runs in open mode


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration_test: SKA's mark for tests that need its services")


def _on_volume(path: str | os.PathLike[str]) -> Path:
    return VOLUME / str(path).lstrip("/")


@pytest.fixture(name="env", scope="session")
def env_fixture() -> Any:
    from tests.common_docker import DlmTestClientDocker  # SKA's, imported where its tests run

    class DlmTestClientHarness(DlmTestClientDocker):
        def __init__(self) -> None:
            super().__init__()
            from tests.integration.client import (
                data_item_client,
                dlm_ingest_client,
                dlm_migration_client,
                dlm_request_client,
                dlm_storage_client,
            )

            dlm_storage_client.STORAGE_URL = DLM_URL
            dlm_ingest_client.INGEST_URL = DLM_URL
            dlm_request_client.REQUEST_URL = DLM_URL
            data_item_client.REQUEST_URL = DLM_URL
            dlm_migration_client.MIGRATION_URL = DLM_URL

        def write_rclone_file_content(self, rclone_path: str, content: str) -> None:
            super().write_rclone_file_content(str(_on_volume(rclone_path)), content)

        def get_rclone_local_file_content(self, rclone_path: str) -> str:
            return super().get_rclone_local_file_content(str(_on_volume(rclone_path)))

        def clear_rclone_data(self, path: str) -> None:
            super().clear_rclone_data(str(_on_volume(path)))

        def create_rclone_directory(self, path: str, mode: int = 0o777) -> None:
            super().create_rclone_directory(str(_on_volume(path)), mode)

        def get_gateway_url(self) -> str:
            return DLM_URL

    return DlmTestClientHarness()


@pytest.fixture(scope="session", autouse=True)
def dlm_stands_in() -> None:
    from ska_dlm.dlm_db import db_access
    from ska_dlm.dlm_storage import dlm_storage_requests

    db_access.DB._query = _postgrest_as_sql  # type: ignore[method-assign]
    dlm_storage_requests.delete_data_item_payload = _delete_data_item_payload
    dlm_storage_requests.delete_uids = _delete_uids


def _delete_data_item_payload(uid: str, item_type: str = "file", item_name: str = "") -> bool:
    response = requests.post(f"{DLM_URL}/storage/delete_data_item_payload", params={"uid": uid}, timeout=60)
    return response.status_code == 200


def _delete_uids() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dlm", "worker", "expiry", "--once"],
        env=WORKER_ENVIRONMENT,
        capture_output=True,
        text=True,
        check=False,
    )
    print("dlm worker expiry --once:", done.returncode, done.stdout, done.stderr)  # shown if the test fails
    done.check_returncode()


def _postgrest_as_sql(table: str, method: str, params: Any = None, json: Any = None, **_: Any) -> list[dict]:
    return asyncio.run(_run(table, method, dict(params or {}), json))


async def _run(table: str, method: str, params: dict[str, Any], body: Any) -> list[dict]:
    assert NAME.match(table), table
    limit = params.pop("limit", None)
    params.pop("select", None)
    conditions, values = [], []
    for column, filter_ in params.items():
        assert NAME.match(column), column
        operator, _, value = str(filter_).partition(".")
        if operator == "is" and value == "null":
            conditions.append(f"t.{column} IS NULL")
            continue
        if operator not in OPERATORS:
            raise NotImplementedError(f"PostgREST filter {column}={filter_} is not translated")
        values.append(value)
        conditions.append(f"t.{column}::text {OPERATORS[operator]} ${len(values)}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    connection = await asyncpg.connect(**CONNECT)
    try:
        if method == "GET":
            rows = await connection.fetch(
                f"SELECT to_jsonb(t) AS row FROM dlm.{table} AS t{where}" + (f" LIMIT {int(limit)}" if limit else ""),
                *values,
            )
        elif method == "PATCH":
            columns = [column for column in body if NAME.match(column)]
            values.append(_json_dumps(body))
            assignments = ", ".join(f"{column} = new.{column}" for column in columns)
            rows = await connection.fetch(
                f"UPDATE dlm.{table} AS t SET {assignments} "
                f"FROM jsonb_populate_record(NULL::dlm.{table}, ${len(values)}::jsonb) AS new{where} "
                "RETURNING to_jsonb(t) AS row",
                *values,
            )
        elif method == "DELETE" and not where and table in ("data_item", "migration"):
            # The tests' clean-up: every item and copy, with what DLM keeps about them.
            await connection.execute(f"TRUNCATE public.{table} CASCADE")
            rows = []
        elif method == "DELETE":
            rows = await connection.fetch(f"DELETE FROM dlm.{table} AS t{where} RETURNING to_jsonb(t) AS row", *values)
        else:
            raise NotImplementedError(f"PostgREST {method} is not translated")
    finally:
        await connection.close()
    return [json.loads(row["row"]) for row in rows]


def _json_dumps(body: Any) -> str:
    return json.dumps(body, default=str)
