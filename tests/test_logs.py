"""Logs an operator can use: one access line per request with its request id and caller, JSON lines
for a log pipeline, and a failing engine that says so once per change, not every pass."""

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from dlm.lifecycle.loops import EngineLoops
from dlm.observability.logs import REQUEST_ID, JsonFormatter
from tests.conftest import Server


async def test_each_request_is_logged_once_with_its_id(
    client: AsyncTestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dlm.access")
    answered = await client.get(
        "/request/query_data_item", params={"item_name": "x"}, headers={"x-request-id": "ticket-42"}
    )
    assert answered.headers["x-request-id"] == "ticket-42"
    [line] = [record for record in caplog.records if record.name == "dlm.access"]
    assert line.getMessage().startswith("GET /request/query_data_item 200 ")
    assert (line.route, line.status) == ("/request/query_data_item", 200)  # type: ignore[attr-defined]
    made_up = await client.get("/health/live", headers={"x-request-id": "not acceptable\\n"})
    assert len(made_up.headers["x-request-id"]) == 32, "an unusable id is replaced by a new one"


def test_json_lines_carry_the_request_and_the_ids_in_context() -> None:
    token = REQUEST_ID.set("ticket-42")
    try:
        record = logging.LogRecord("dlm.migration", logging.WARNING, __file__, 1, "copy %s failed", (7,), None)
        record.migration_id = 7
        line = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["message"] == "copy 7 failed" and line["level"] == "WARNING" and line["logger"] == "dlm.migration"
    assert line["request_id"] == "ticket-42" and line["migration_id"] == 7 and line["time"].endswith("+00:00")


async def test_a_failing_engine_logs_its_traceback_once(
    client: AsyncTestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dlm.lifecycle")
    passes = 0

    async def failing(sessionmaker: object) -> None:
        nonlocal passes
        passes += 1
        raise ConnectionRefusedError("the database is away")

    loops = EngineLoops(sessionmaker=None, settings=None)  # type: ignore[arg-type]
    task = asyncio.create_task(loops._loop("expiry", failing, 0.01))
    while passes < 5:
        await asyncio.sleep(0.01)
    task.cancel()
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info, "one traceback for one condition"


async def test_dlm_serve_writes_json_lines(database_url: str, tmp_path: Path) -> None:
    server = await Server(database_url, tmp_path / "data", log_format="json").ready()
    try:
        async with httpx.AsyncClient(base_url=server.base) as plain:
            await plain.get("/request/query_data_item", params={"item_name": "x"}, headers={"x-request-id": "r-1"})
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    [access] = [line for line in lines if line["logger"] == "dlm.access" and line.get("request_id") == "r-1"]
    assert access["status"] == 200 and access["route"] == "/request/query_data_item" and access["actor"] == "anonymous"
