"""Notifications: written by triggers in the transaction of the change, delivered at least once to a
real RabbitMQ (SKA-DLM's exchange and routing key) and to signed webhooks, surviving a kill -9."""

import asyncio
import hashlib
import hmac
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.config import Settings
from dlm.db.models import OutboxEvent
from dlm.events.relay import Relay
from tests.conftest import Registry, Server
from tests.migration.conftest import copy

SECRET = "webhook-test-secret"


class Consumer:
    """A queue of our own bound to the exchange, as ska-dlm-client's ConfigDB watcher binds one."""

    def __init__(self, url: str, exchange: str, routing_key: str = "#") -> None:
        self.url, self.exchange_name, self.routing_key = url, exchange, routing_key
        self.messages: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def __aenter__(self) -> "Consumer":
        self.connection = await aio_pika.connect(self.url)
        channel = await self.connection.channel()
        exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        self.queue = await channel.declare_queue(exclusive=True)
        await self.queue.bind(exchange, routing_key=self.routing_key)
        await self.queue.consume(self._received)
        return self

    async def _received(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.messages.append(message)
        await message.ack()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.connection.close()

    def bodies(self, routing_key: str) -> list[dict[str, Any]]:
        return [json.loads(message.body) for message in self.messages if message.routing_key == routing_key]

    async def wait_for(self, predicate: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            assert time.monotonic() < deadline, [message.body for message in self.messages]
            await asyncio.sleep(0.05)


def finished(consumer: Consumer) -> bool:
    return any(body["complete"] for body in consumer.bodies("dlm.migration.update"))


@pytest.fixture
def exchange() -> str:
    return f"dlm.test.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def notifying(settings: Settings, amqp_url: str, exchange: str) -> Settings:
    return msgspec.structs.replace(
        settings,
        amqp_url=amqp_url,
        amqp_exchange=exchange,
        events_interval_seconds=0.1,
        migration_workers=1,
        migration_poll_seconds=0.1,
    )


@pytest.fixture
async def notifying_registry(notifying: Settings, storage_root: Path) -> AsyncIterator[Registry]:
    async with AsyncTestClient(create_app(notifying)) as client:
        registry = Registry(client, storage_root)
        await registry.storage()
        yield registry


async def test_every_copy_is_published_as_ska_dlm_publishes_it(
    notifying_registry: Registry, amqp_url: str, exchange: str, tmp_path: Path
) -> None:
    registry = notifying_registry
    async with Consumer(amqp_url, exchange, "dlm.migration.update") as consumer:
        await registry.storage("archive", root=tmp_path / "archive", phase="SOLID")
        uid = await registry.register("vis")
        queued = await copy(registry.client, uid=uid, destination_name="archive")
        await consumer.wait_for(finished)
    updates = consumer.bodies("dlm.migration.update")
    assert [body["status"] for body in updates] == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert {body["migration_id"] for body in updates} == {queued["migration_id"]}
    last = updates[-1]
    assert last["complete"] is True and last["job_status"]["success"] is True
    assert {"oid", "source_storage_id", "destination_storage_id", "user", "group", "job_stats", "date"} <= set(last)
    message = consumer.messages[-1]
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.headers["event_type"] == "dlm.migration.update" and message.message_id
    assert message.headers["outbox_id"] == message.message_id, "SKA-DLM's relay's header, for its consumers"


async def test_a_failed_copy_is_published_complete_and_unsuccessful(
    notifying_registry: Registry, amqp_url: str, exchange: str, tmp_path: Path
) -> None:
    registry = notifying_registry
    async with Consumer(amqp_url, exchange, "dlm.migration.update") as consumer:
        await registry.storage("archive", root=tmp_path / "archive", phase="SOLID")
        path = registry.payload("vanishing")
        uid = await registry.register("vanishing")
        path.unlink()
        await copy(registry.client, uid=uid, destination_name="archive")
        await consumer.wait_for(finished)
    last = consumer.bodies("dlm.migration.update")[-1]
    assert (last["status"], last["complete"], last["job_status"]["success"]) == ("FAILED", True, False)


async def test_item_states_and_storage_events_are_published(
    notifying_registry: Registry, amqp_url: str, exchange: str, tmp_path: Path
) -> None:
    registry = notifying_registry
    async with Consumer(amqp_url, exchange, "dlm.#") as consumer:
        await registry.storage("second", root=tmp_path / "second")
        uid = await registry.register("obs")
        response = await registry.client.patch("/request/set_state", params={"uid": uid, "state": "CORRUPTED"})
        assert response.status_code == 200, response.text
        await consumer.wait_for(lambda c: len(c.bodies("dlm.item.state")) >= 2)
    created, corrupted = consumer.bodies("dlm.item.state")[:2]
    assert created["item_state"] == "READY" and [item["uid"] for item in created["items"]] == [uid]
    assert corrupted["item_state"] == "CORRUPTED" and corrupted["items"][0]["previous_state"] == "READY"
    storage_events = consumer.bodies("dlm.storage.event")
    assert any(body["storage_name"] == "second" and body["event"] == "storage_created" for body in storage_events)


async def test_a_bulk_registration_is_a_few_events_not_one_per_item(
    notifying_registry: Registry, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    registry = notifying_registry
    items = []
    for index in range(2500):
        registry.payload(f"bulk/{index}", b"x")
        items.append({"item_name": f"bulk-{index}", "uri": f"bulk/{index}", "storage_name": "disk"})
    response = await registry.client.post("/ingest/register_data_items", json=items)
    assert response.status_code == 200, response.text
    async with sessionmaker() as session:
        sizes = list(
            await session.scalars(
                select(func.jsonb_array_length(OutboxEvent.payload["items"])).where(
                    OutboxEvent.event_type == "dlm.item.state", OutboxEvent.payload["item_state"].astext == "READY"
                )
            )
        )
    assert sum(sizes) == 2500 and max(sizes) <= 1000 and len(sizes) <= 5, sizes


async def test_without_a_sink_nothing_is_written(
    registry: Registry, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await registry.register("quiet")
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxEvent)) == 0


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook endpoint that fails its first call (the relay must retry) and checks signatures."""

    calls: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.calls.append((dict(self.headers), body))
        self.send_response(503 if len(Receiver.calls) == 1 else 204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dlm-events"
    finally:
        server.shutdown()


async def test_webhooks_receive_signed_events_and_failures_are_retried(
    settings: Settings, storage_root: Path, receiver: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    hooked = msgspec.structs.replace(settings, webhooks=receiver, webhook_secret=SECRET, events_interval_seconds=0)
    async with AsyncTestClient(create_app(hooked)) as client:
        await Registry(client, storage_root).storage()
    # The receiver is on loopback: a webhook reaches only public addresses unless DLM_OUTBOUND_ALLOW lists it.
    unlisted = Relay(hooked)
    try:
        refused = await unlisted.run_once(sessionmaker)
    finally:
        await unlisted.close()
    assert (refused.delivered, refused.retrying, Receiver.calls) == (0, 1, [])
    async with sessionmaker() as session:
        [pending] = await session.scalars(select(OutboxEvent))
        assert "unreachable" in pending.last_error and "DLM_OUTBOUND_ALLOW" in pending.last_error
    async with sessionmaker() as session, session.begin():
        for event in await session.scalars(select(OutboxEvent)):
            event.next_attempt_at, event.attempts = event.created_at, 0
    hooked = msgspec.structs.replace(hooked, outbound_allow="127.0.0.1")
    relay = Relay(hooked)
    try:
        first = await relay.run_once(sessionmaker)
        assert (first.delivered, first.retrying) == (0, 1), "the receiver's 503: retried later, not lost"
        async with sessionmaker() as session, session.begin():
            for event in await session.scalars(select(OutboxEvent)):
                event.next_attempt_at = event.created_at  # skip the backoff
        second = await relay.run_once(sessionmaker)
        assert (second.delivered, second.retrying) == (1, 0)
        assert (await relay.run_once(sessionmaker)).delivered == 0, "delivered once is done"
    finally:
        await relay.close()
    headers, body = Receiver.calls[-1]
    expected = hmac.new(SECRET.encode(), headers["x-dlm-timestamp"].encode() + b"." + body, hashlib.sha256)
    assert headers["x-dlm-signature"] == f"sha256={expected.hexdigest()}"
    event = json.loads(body)
    assert event["event_type"] == headers["x-dlm-event"] and str(event["event_id"]) == headers["x-dlm-event-id"]
    assert event["event_type"] == "dlm.storage.event" and event["payload"]["event"] == "storage_created"
    assert len(Receiver.calls) == 2 and Receiver.calls[0][1] == body, "the retry sent the same event"
    assert headers["host"] == receiver.split("/")[2], "sent to the address checked, under the webhook's own name"


async def test_events_committed_before_a_kill_9_are_published_after_it(
    database_url: str, tmp_path: Path, amqp_url: str, exchange: str
) -> None:
    """DLM writes the events but never relays them (interval 0), is killed, and a relay started
    afterwards publishes every one."""
    server = Server(
        database_url,
        tmp_path / "dlm",
        amqp_url=amqp_url,
        amqp_exchange=exchange,
        events_interval_seconds=0,
        migration_workers=1,
    )
    await server.ready()
    import httpx

    (tmp_path / "dlm" / "store").mkdir()
    (tmp_path / "dlm" / "store" / "obs").write_bytes(os.urandom(1000))
    (tmp_path / "dlm" / "archive").mkdir()
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
        await client.post("/storage/init_location", params={"location_name": "site", "location_type": "local-dev"})
        for name, root in (("disk", "store"), ("archive", "archive")):
            response = await client.post(
                "/storage/init_storage",
                params={
                    "storage_name": name,
                    "storage_type": "filesystem",
                    "storage_interface": "posix",
                    "root_directory": str(tmp_path / "dlm" / root),
                    "location_name": "site",
                },
            )
            assert response.status_code == 200, response.text
        uid = (
            await client.post(
                "/ingest/register_data_item", params={"item_name": "obs", "uri": "obs", "storage_name": "disk"}
            )
        ).json()
        queued = (
            await client.post("/migration/copy_data_item", params={"uid": uid, "destination_name": "archive"})
        ).json()
        deadline = time.monotonic() + 30
        while (await client.get("/migration/get_migration", params={"migration_id": queued["migration_id"]})).json()[0][
            "status"
        ] != "SUCCEEDED":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    server.kill()
    async with Consumer(amqp_url, exchange, "dlm.migration.update") as consumer:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
        relayed = subprocess.run(
            [sys.executable, "-m", "dlm", "worker", "events", "--once"],
            env={
                **environment,
                "DLM_DATABASE_URL": database_url,
                "DLM_AMQP_URL": amqp_url,
                "DLM_AMQP_EXCHANGE": exchange,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert relayed.returncode == 0, relayed.stderr
        await consumer.wait_for(finished)
    assert [body["status"] for body in consumer.bodies("dlm.migration.update")] == ["PENDING", "RUNNING", "SUCCEEDED"]
