"""Fixtures for copies: an app whose workers poll often and retry soon, and helpers to follow a job."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from dlm.app import create_app
from dlm.config import Settings
from dlm.enums import StorageInterface
from dlm.transfer.backends import make_backend
from tests.conftest import Registry, make_settings

FINISHED = {"SUCCEEDED", "FAILED", "CANCELLED"}


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        database_url,
        tmp_path,
        migration_workers=2,
        migration_poll_seconds=0.1,
        migration_lease_seconds=5,
        migration_retry_base_seconds=0.1,
        migration_max_attempts=2,
    )


@pytest.fixture
def throttled(settings: Settings) -> Settings:
    """Copies at 2 MiB/s: slow enough to watch, cancel or kill one mid-way."""
    return msgspec.structs.replace(settings, transfer_max_bytes_per_second=2 * 1024 * 1024)


@pytest.fixture
async def slow_client(throttled: Settings) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(throttled)) as client:
        yield client


async def migration(client: AsyncTestClient, migration_id: int) -> dict[str, Any]:
    response = await client.get("/migration/get_migration", params={"migration_id": migration_id})
    assert response.status_code == 200, response.text
    [row] = response.json()
    return row


async def wait_for(
    client: AsyncTestClient, migration_id: int, statuses: set[str] = FINISHED, timeout: float = 60
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        row = await migration(client, migration_id)
        if row["status"] in statuses:
            return row
        assert time.monotonic() < deadline, f"migration {migration_id} still {row['status']}: {row}"
        await asyncio.sleep(0.05)


async def wait_for_bytes(client: AsyncTestClient, migration_id: int, timeout: float = 10) -> None:
    """Until the running copy has recorded some progress (so a partial payload exists)."""
    deadline = time.monotonic() + timeout
    while (await migration(client, migration_id))["bytes_done"] == 0:
        assert time.monotonic() < deadline, f"migration {migration_id} made no progress"
        await asyncio.sleep(0.05)


async def copy(client: AsyncTestClient, **params: Any) -> dict[str, Any]:
    response = await client.post("/migration/copy_data_item", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"uid", "migration_id"}, body
    return body


async def put_object(config: dict[str, Any], bucket: str, uri: str, content: bytes) -> None:
    """Put (or replace) an object as anyone else would, not through DLM's never-overwriting write."""
    async with make_backend(StorageInterface.S3, bucket, config) as backend:
        await backend._client.put_object(Bucket=bucket, Key=backend.key(uri), Body=content)


async def read_object(config: dict[str, Any], bucket: str, uri: str) -> bytes | None:
    async with make_backend(StorageInterface.S3, bucket, config) as backend:
        if await backend.stat(uri) is None:
            return None
        return b"".join([chunk async for chunk in backend.read(uri)])


async def list_objects(config: dict[str, Any], bucket: str) -> list[str]:
    async with make_backend(StorageInterface.S3, bucket, config) as backend:
        return [entry.path async for entry in backend.walk()]


async def storage_id(registry: Registry, name: str) -> str:
    response = await registry.client.get("/storage/query_storage", params={"storage_name": name})
    return response.json()[0]["storage_id"]
