"""GET /metrics after real work: the counters moved, the database gauges say what is there, and the
route is a reader's, as every other."""

import json
import re
from pathlib import Path

import msgspec
import pytest
import yaml
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.config import Settings
from dlm.enums import Role
from dlm.observability import metrics
from tests.auth.conftest import bearer, make_token
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
    unknown = {"method": "GET", "route": "/request/query_item_history", "status": "422"}
    await registry.client.get("/request/query_item_history", params={"uid": uid, "no_such_parameter": "x"})
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


async def test_metrics_are_for_readers_and_scraped_per_pod_by_ip(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    closed = msgspec.structs.replace(settings, auth="required")
    reader = await make_token(sessionmaker, "prometheus", Role.READER)
    async with AsyncTestClient(create_app(closed)) as client:
        assert_error(await client.get("/metrics"), 401, "Unauthorized")
        by_ip = await client.get("/metrics", headers={**bearer(reader), "Host": "10.42.0.17:8000"})
        assert by_ip.status_code == 200 and "dlm_" in by_ip.text, "a pod's IP is no name DLM_ALLOWED_HOSTS lists"
        assert_error(await client.get("/metrics", headers={"Host": "10.42.0.17:8000"}), 401, "Unauthorized")
        other = await client.get("/request/query_data_item", headers={**bearer(reader), "Host": "10.42.0.17:8000"})
        assert_error(other, 403, "Forbidden", "DLM_ALLOWED_HOSTS")
    opened = msgspec.structs.replace(settings, auth="none")
    async with AsyncTestClient(create_app(opened)) as client:  # open: loopback only, Host checked
        assert_error(await client.get("/metrics", headers={"Host": "attacker.example"}), 403, "Forbidden")


MONITORING = Path(__file__).parent.parent / "deploy" / "monitoring"
METRIC_NAME = re.compile(r"\bdlm_[a-z_]+\b")


def expressions() -> list[str]:
    """Every PromQL expression of the shipped alert rules and dashboard."""
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    found = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    found += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return found


async def test_the_shipped_alerts_and_dashboard_name_only_metrics_dlm_exports(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "CACHE_SECONDS", 0.0)
    response = await registry.client.get("/metrics")
    exported = set()
    for family in text_string_to_metric_families(response.text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        exported |= {family.name + suffix for suffix in suffixes}
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["metrics_path"] == "/metrics" and config["rule_files"] == ["alerts.yml"]
    named = {name for expression in expressions() for name in METRIC_NAME.findall(expression)}
    assert named, "the files use DLM's metrics"
    assert named <= exported, named - exported
