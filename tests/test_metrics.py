"""GET /metrics after real work: the counters moved, the database gauges say what is there, and the
route is a reader's, as every other."""

from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from dlm.app import create_app
from dlm.config import Settings
from dlm.observability import metrics
from tests.conftest import Registry, assert_error
from tests.migration.conftest import copy, wait_for


async def scrape(client: AsyncTestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_real_work(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = await scrape(registry.client)
    monkeypatch.setattr(metrics, "CACHE_SECONDS", 0.0)  # the database gauges as of each scrape from here
    await registry.storage("archive", root=tmp_path / "archive")
    registry.payload("obs", b"x" * 1000)
    uid = await registry.register("obs", "obs")
    queued = await copy(registry.client, uid=uid, destination_name="archive")
    assert (await wait_for(registry.client, queued["migration_id"]))["status"] == "SUCCEEDED"
    downloaded = await registry.client.get("/request/retrieve", params={"uid": uid})
    assert downloaded.status_code == 200
    await registry.client.get("/request/query_data_item", params={"uid": "not-a-uuid"})
    after = await scrape(registry.client)

    assert value(after, "dlm_copied_bytes_total") - value(before, "dlm_copied_bytes_total") == 1000
    assert value(after, "dlm_retrieved_bytes_total") - value(before, "dlm_retrieved_bytes_total") == 1000
    assert value(after, "dlm_copies_total", status="SUCCEEDED") > value(before, "dlm_copies_total", status="SUCCEEDED")
    route = {"method": "POST", "route": "/ingest/register_data_item", "status": "200"}
    assert value(after, "dlm_http_requests_total", **route) - value(before, "dlm_http_requests_total", **route) == 1
    refused = {"method": "GET", "route": "/request/query_data_item", "status": "422"}
    assert value(after, "dlm_http_requests_total", **refused) >= 1, "by route template and status"
    unknown = {"method": "GET", "route": "/request/query_data_item", "status": "422"}
    await registry.client.get("/request/query_data_item", params={"no_such_parameter": "x"})
    again = await scrape(registry.client)
    assert (
        value(again, "dlm_http_requests_total", **unknown) == value(after, "dlm_http_requests_total", **unknown) + 1
    ), "refused by a middleware: counted with the status it got, not as a 500"
    assert value(after, "dlm_http_request_duration_seconds_count", method="POST", route="/ingest/register_data_item")
    # What the database holds, as of this scrape.
    assert value(after, "dlm_items", state="READY") == 2
    assert value(after, "dlm_migrations", status="SUCCEEDED") == 1
    assert value(after, "dlm_storage_used_bytes", storage="archive") == 1000
    assert value(after, "dlm_storage_replicas", storage="disk") == 1
    assert "dlm_migration_oldest_due_seconds" in {name for name, _ in after}


async def test_metrics_are_for_readers(settings: Settings) -> None:
    closed = msgspec.structs.replace(settings, auth="required")
    async with AsyncTestClient(create_app(closed)) as client:
        assert_error(await client.get("/metrics"), 401, "Unauthorized")
