"""Deliver the outbox's events, at least once, to RabbitMQ and to webhooks.

Any number of DLM processes may relay at once: each takes a batch of due events with ``FOR UPDATE SKIP
LOCKED`` and commits what it delivered. An event is removed from a sink's list only after that sink
acknowledged it (a publisher confirm, a 2xx), so a crash between publishing and committing publishes
again: consumers may see an event twice (its ``event_id`` tells), never miss one. A sink that fails is
retried with backoff (doubling, at most 5 minutes), event by event; the other sinks go on.
"""

import datetime
import hashlib
import hmac
import json
import logging
import time
from typing import Any, Protocol
from urllib.parse import urlunsplit

import msgspec
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.config import Settings, comma_list
from dlm.db.engine import transaction
from dlm.db.models import OutboxEvent
from dlm.transfer.outbound import OutboundPolicy, default_port, parse_endpoint

log = logging.getLogger("dlm.events")

ACTOR = "events"
BATCH = 100
MAX_BACKOFF_SECONDS = 300.0
SEND_TIMEOUT_SECONDS = 10.0


class Sink(Protocol):
    name: str

    async def send(self, event: OutboxEvent) -> None: ...

    async def close(self) -> None: ...


def message_body(event: OutboxEvent) -> bytes:
    return json.dumps(event.payload, separators=(",", ":")).encode()


class AmqpSink:
    """A durable topic exchange (``dlm.outbox``, as SKA-DLM's); the routing key is the event type."""

    name = "amqp"

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange_name = exchange
        self._connection: Any = None
        self._exchange: Any = None

    async def _open(self) -> Any:
        import aio_pika

        if self._exchange is None:
            self._connection = await aio_pika.connect(self.url, timeout=SEND_TIMEOUT_SECONDS)
            channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        return self._exchange

    async def send(self, event: OutboxEvent) -> None:
        import aio_pika

        try:
            exchange = await self._open()
            message = aio_pika.Message(
                body=message_body(event),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(event.event_id),
                headers={
                    "event_id": event.event_id,
                    # SKA-DLM's relay names the row so; its consumers may read either.
                    "outbox_id": str(event.event_id),
                    "event_type": event.event_type,
                    "created_at": event.created_at.isoformat(),
                },
            )
            # Returns once the broker confirms it has the message.
            await exchange.publish(message, routing_key=event.event_type, timeout=SEND_TIMEOUT_SECONDS)
        except BaseException:
            await self.close()  # the next attempt connects afresh
            raise

    async def close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            try:
                await connection.close()
            except Exception:
                pass


class WebhookSink:
    """POSTs ``{"event_id", "event_type", "created_at", "payload"}`` signed with HMAC-SHA256 over
    ``"<timestamp>.<body>"`` in ``X-DLM-Signature: sha256=<hex>`` (``X-DLM-Timestamp`` carries the
    timestamp, so a receiver can refuse replays)."""

    def __init__(self, url: str, secret: str, outbound: OutboundPolicy) -> None:
        self.url = url
        self.name = f"webhook:{url}"
        self.secret = secret.encode()
        self.outbound = outbound
        self._client: Any = None

    async def send(self, event: OutboxEvent) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=SEND_TIMEOUT_SECONDS, follow_redirects=False)
        body = json.dumps(
            {
                "event_id": event.event_id,
                "event_type": event.event_type,
                "created_at": event.created_at.isoformat(),
                "payload": event.payload,
            },
            separators=(",", ":"),
        ).encode()
        timestamp = str(int(time.time()))
        signature = hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        # Sent to the address the policy checked (the name could resolve elsewhere a moment later); the
        # Host header and TLS name are still the webhook's own.
        parts = parse_endpoint(self.url, "DLM_WEBHOOKS")
        [address, *_] = await self.outbound.resolve(parts.hostname or "", default_port(parts))
        host = f"[{address}]" if address.version == 6 else str(address)
        response = await self._client.post(
            urlunsplit(parts._replace(netloc=f"{host}:{default_port(parts)}")),
            content=body,
            extensions={"sni_hostname": parts.hostname},
            headers={
                "host": parts.netloc.rpartition("@")[2],
                "content-type": "application/json",
                "x-dlm-event": event.event_type,
                "x-dlm-event-id": str(event.event_id),
                "x-dlm-timestamp": timestamp,
                "x-dlm-signature": f"sha256={signature}",
            },
        )
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"answered {response.status_code}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def make_sinks(settings: Settings) -> list[Sink]:
    """A sink for each of ``settings.event_sinks``, under the same name."""
    sinks: list[Sink] = []
    outbound = OutboundPolicy(comma_list(settings.outbound_allow))
    for name in settings.event_sinks:
        if name == AmqpSink.name:
            sinks.append(AmqpSink(settings.amqp_url or "", settings.amqp_exchange))
        else:
            sinks.append(WebhookSink(name.removeprefix("webhook:"), settings.webhook_secret or "", outbound))
    return sinks


class RelayReport(msgspec.Struct):
    delivered: int = 0
    retrying: int = 0
    # Deliveries to sinks this DLM no longer has (taken out of DLM_WEBHOOKS, say): dropped, and logged.
    dropped: int = 0
    removed: int = 0

    def summary(self) -> str:
        return (
            f"{self.delivered} delivered, {self.retrying} to retry, {self.dropped} for sinks no longer "
            f"configured, {self.removed} old events removed"
        )


class Relay:
    def __init__(self, settings: Settings) -> None:
        self.sinks = {sink.name: sink for sink in make_sinks(settings)}
        self.keep = datetime.timedelta(seconds=settings.events_keep_seconds)

    async def run_once(self, sessionmaker: async_sessionmaker[AsyncSession]) -> RelayReport:
        report = RelayReport()
        while True:
            async with transaction(sessionmaker, actor=ACTOR) as session:
                done = await self._relay_batch(session, report)
            if done < BATCH:
                break
        async with transaction(sessionmaker, actor=ACTOR) as session:
            removed = await session.execute(
                delete(OutboxEvent).where(
                    func.cardinality(OutboxEvent.pending) == 0, OutboxEvent.delivered_at < func.now() - self.keep
                )
            )
            report.removed = removed.rowcount or 0
        return report

    async def _relay_batch(self, session: AsyncSession, report: RelayReport) -> int:
        events = list(
            await session.scalars(
                select(OutboxEvent)
                .where(func.cardinality(OutboxEvent.pending) > 0, OutboxEvent.next_attempt_at <= func.now())
                .order_by(OutboxEvent.event_id)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        )
        failed: dict[str, str] = {}  # a sink that failed in this batch is not tried again in it
        now = datetime.datetime.now(datetime.UTC)
        for event in events:
            left, errors = [], []
            for name in event.pending:
                sink = self.sinks.get(name)
                if sink is None:
                    log.warning("event %s: no sink %s is configured any more; dropped for it", event.event_id, name)
                    report.dropped += 1
                    continue
                if name not in failed:
                    try:
                        await sink.send(event)
                        report.delivered += 1
                        continue
                    except Exception as exc:
                        failed[name] = f"{name}: {exc or type(exc).__name__}"
                        log.warning("event %s: %s", event.event_id, failed[name])
                left.append(name)
                errors.append(failed[name])
            event.pending = left
            if left:
                report.retrying += 1
                event.attempts += 1
                event.last_error = "; ".join(errors)
                event.next_attempt_at = now + datetime.timedelta(
                    seconds=min(MAX_BACKOFF_SECONDS, 2.0 ** (event.attempts - 1))
                )
            else:
                event.delivered_at = now
                event.last_error = None
        return len(events)

    async def close(self) -> None:
        for sink in self.sinks.values():
            await sink.close()
