"""Pipeline test helpers: a real HTTP receiver on loopback, Kafka producing and reading."""

import asyncio
import json
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from kafka import topics
from kafka.connection import KafkaConnection
from kafka.provisioning import create_topics
from tests.support import Api
from webhooks.v1 import events_pb2
from webhooks.v1 import webhook_service_pb2 as pb


@dataclass
class Reply:
    """How the receiver answers one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: str = "ok"
    reset: bool = False  # drop the connection with a TCP reset instead of answering


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 200  # what the receiver answered
    peer: tuple[str, int] = ("", 0)  # the client's end of the connection

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An aiohttp server on 127.0.0.1 in its own thread. Each path answers with its list of
    replies in turn (the last one repeats); unknown paths answer 200."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.requests: list[Received] = []
        self._replies: dict[str, list[Reply]] = {}
        # Paths whose replies run per delivery (webhook-id) rather than per path.
        self._each: set[str] = set()
        # Replies chosen by the request's JSON body, before the others (reply_if).
        self._when: dict[str, list[tuple[Callable[[Any], bool], Reply]]] = {}
        self._counts: dict[str | tuple[str, str], int] = {}
        self._ssl = ssl_context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lock = threading.Lock()
        self.port = 0
        self._active = 0
        self.max_active = 0  # most requests being answered at once

    def start(self) -> "Receiver":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            key: str | tuple[str, str] = request.path
            if request.path in self._each:
                key = (request.path, request.headers.get("webhook-id", ""))
            count = self._counts.get(key, 0)
            self._counts[key] = count + 1
            replies = self._replies.get(request.path, [Reply()])
            reply = replies[min(count, len(replies) - 1)]
            for matches, chosen in self._when.get(request.path, ()):
                if matches(json.loads(body)):
                    reply = chosen
                    break
            self.requests.append(
                Received(
                    request.path,
                    dict(request.headers),
                    body,
                    time.monotonic(),
                    reply.status,
                    tuple(request.transport.get_extra_info("peername")[:2])
                    if request.transport is not None
                    else ("", 0),
                )
            )
        self._active += 1  # on the receiver's loop: no lock needed
        self.max_active = max(self.max_active, self._active)
        try:
            if reply.delay:
                await asyncio.sleep(reply.delay)
        finally:
            self._active -= 1
        if reply.reset and request.transport is not None:
            sock = request.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
        return web.Response(status=reply.status, headers=reply.headers, text=reply.body)

    def reply(self, path: str, *replies: Reply) -> str:
        """Sets how `path` answers; returns its URL."""
        with self._lock:
            self._replies[path] = list(replies)
        return self.url(path)

    def reply_each(self, path: str, *replies: Reply) -> str:
        """Like `reply`, but every delivery (webhook-id) gets the replies in turn."""
        with self._lock:
            self._each.add(path)
        return self.reply(path, *replies)

    def reply_if(self, path: str, matches: Callable[[Any], bool], reply: Reply) -> str:
        """Requests to `path` whose JSON body `matches` get `reply`; returns its URL."""
        with self._lock:
            self._when.setdefault(path, []).append((matches, reply))
        return self.url(path)

    def url(self, path: str) -> str:
        scheme = "https" if self._ssl else "http"
        host = "localhost" if self._ssl else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.at(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{path}: {len(self.at(path))} of {count} requests after {timeout} s")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def cloud_event(
    event_type: str, data: Any, *, event_id: str | None = None, tenant: str | None = "acme"
) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": event_id or f"evt-{uuid.uuid4().hex[:12]}",
        "type": event_type,
        "source": "tests/pipeline",
        "time": "2026-11-23T12:00:00Z",
        "data": data,
    }
    if tenant is not None:
        event["tenant"] = tenant
    return event


Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def structured(event: dict[str, Any]) -> Record:
    return (
        event["id"].encode(),
        json.dumps(event).encode(),
        [("content-type", b"application/cloudevents+json")],
    )


def binary(event: dict[str, Any]) -> Record:
    headers = [(f"ce_{k}", str(v).encode()) for k, v in event.items() if k != "data"]
    return (
        event["id"].encode(),
        json.dumps(event["data"]).encode(),
        [*headers, ("content-type", b"application/json")],
    )


def protobuf(event: dict[str, Any]) -> Record:
    message = events_pb2.DomainEvent(
        id=event["id"],
        type=event["type"],
        source=event["source"],
        tenant=event.get("tenant", ""),
        data=json.dumps(event["data"]).encode(),
    )
    return (
        event["id"].encode(),
        message.SerializeToString(),
        [("content-type", b"application/x-protobuf")],
    )


def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            futures = [await producer.send(topic, key=k, value=v, headers=h) for k, v, h in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def produce_paced(
    bootstrap: str, topic: str, records: Sequence[Record], interval: float
) -> list[float]:
    """Produces one record every `interval` seconds; returns when each was acknowledged
    (time.monotonic())."""

    async def run() -> list[float]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        acked = []
        try:
            for key, value, headers in records:
                await (await producer.send(topic, key=key, value=value, headers=headers))
                acked.append(time.monotonic())
                await asyncio.sleep(interval)
        finally:
            await producer.stop()
        return acked

    return asyncio.run(run())


def read_topic(
    bootstrap: str, topic: str, until: Callable[[list[Any]], bool], timeout: float = 20.0
) -> list[Any]:
    """Every record of the topic from the start, read until `until(records)` holds."""

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            records: list[Any] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for items in batch.values():
                    records.extend(items)
                if until(records):
                    return records
            raise AssertionError(
                f"{topic}: condition not met after {timeout} s ({len(records)} records)"
            )
        finally:
            await consumer.stop()

    return asyncio.run(run())


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """Every partition of the topic (a fresh consumer's metadata may not know them yet)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return sorted(p["partition"] for p in described["partitions"])
    finally:
        await admin.close()


def audit_records(
    bootstrap: str,
    delivery_ids: set[str],
    count: int,
    timeout: float = 20.0,
    topic: str = topics.DELIVERY_ATTEMPTS_TOPIC,
) -> list[events_pb2.DeliveryAttempt]:
    """The DeliveryAttempt records of the given deliveries, once `count` of them are there
    and every delivery has one: a record may reach the topic twice, and copies read from one
    partition must not stand in for records of another not read yet."""

    def mine(records: list[Any]) -> list[events_pb2.DeliveryAttempt]:
        out = []
        for record in records:
            message = events_pb2.DeliveryAttempt.FromString(record.value)
            if message.delivery_id in delivery_ids:
                out.append(message)
        return out

    def complete(records: list[Any]) -> bool:
        found = mine(records)
        return len(found) >= count and {m.delivery_id for m in found} == delivery_ids

    records = read_topic(bootstrap, topic, complete, timeout)
    return mine(records)


class Broker(Protocol):
    """tansu (kafka.embedded.EmbeddedBroker) or Apache Kafka (tests.apache_kafka)."""

    supports_idempotence: bool

    @property
    def bootstrap(self) -> str: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


def pipeline_env(broker: Broker, topic: str) -> dict[str, str]:
    """Settings of a test service with Kafka on and short, deterministic retries."""
    return {
        "WEBHOOKS_KAFKA_ENABLED": "true",
        "WEBHOOKS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        # A group per topic: a test's instances share it, no other test's members join it.
        "WEBHOOKS_KAFKA_GROUP_ID": f"webhooks-{topic}",
        "WEBHOOKS_KAFKA_IDEMPOTENCE": str(broker.supports_idempotence).lower(),
        "WEBHOOKS_KAFKA_TOPICS": topic,
        "WEBHOOKS_ALLOW_HTTP": "true",
        "WEBHOOKS_RETRY_SCHEDULE": "0.2,0.2",
        "WEBHOOKS_RETRY_JITTER": "0",
        "WEBHOOKS_SCHEDULER_INTERVAL_SECONDS": "0.05",
        "WEBHOOKS_ATTEMPT_TIMEOUT_SECONDS": "2",
        "WEBHOOKS_DELIVERY_LEASE_SECONDS": "5",
        "WEBHOOKS_KAFKA_SESSION_TIMEOUT_MS": "2000",
        # Retry tests fail one endpoint many times; the breaker test sets its own threshold.
        "WEBHOOKS_CIRCUIT_FAILURES": "100",
    }


def new_topic(bootstrap: str) -> str:
    topic = f"events-{uuid.uuid4().hex[:10]}"
    asyncio.run(create_topics(KafkaConnection(bootstrap), [topic]))
    return topic


def stream_events(bootstrap: str, topic: str, ids: list[str], pause: float) -> threading.Thread:
    """Produces `person.created` events with these ids in groups of 10, `pause` seconds
    apart, in the background."""

    def run() -> None:
        for start in range(0, len(ids), 10):
            group = [
                structured(cloud_event("person.created", {"i": i}, event_id=i))
                for i in ids[start : start + 10]
            ]
            produce(bootstrap, topic, group)
            time.sleep(pause)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def webhook_ids_by_event(
    receiver: Receiver, path: str, delivered_only: bool = False
) -> dict[str, set[str]]:
    """The webhook-ids each event arrived with at `path` (only 2xx answers if asked)."""
    webhook_ids: dict[str, set[str]] = {}
    for request in receiver.at(path):
        if delivered_only and not 200 <= request.status < 300:
            continue
        webhook_ids.setdefault(request.json["id"], set()).add(request.headers["webhook-id"])
    return webhook_ids


def wait_all_delivered(
    receiver: Receiver, path: str, ids: list[str], timeout: float
) -> dict[str, set[str]]:
    """Waits until every event id was answered 2xx at `path`; returns webhook_ids_by_event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(ids) <= set(webhook_ids_by_event(receiver, path, delivered_only=True)):
            return webhook_ids_by_event(receiver, path)
        time.sleep(0.1)
    missing = set(ids) - set(webhook_ids_by_event(receiver, path, delivered_only=True))
    raise AssertionError(f"{len(missing)} events never delivered, e.g. {sorted(missing)[:5]}")


@dataclass
class Pipeline:
    """A running service with Kafka on, its ingest topic and its client."""

    api: Api
    bootstrap: str
    topic: str

    def send(self, *records: Record) -> None:
        produce(self.bootstrap, self.topic, records)

    def delivery(self, delivery_id: str) -> Any:
        """The delivery, waiting a moment for it to be stored: its first attempt goes out
        while its ingest transaction runs (AheadPlanner), so a receiver may see it first."""
        deadline = time.monotonic() + 5
        while True:
            try:
                return self.api.call("GetDelivery", pb.GetDeliveryRequest(id=delivery_id)).delivery
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def wait_status(self, delivery_id: str, status: int, timeout: float = 15) -> Any:
        """The delivery once it has `status`: an endpoint's answer is recorded just after it."""
        deadline = time.monotonic() + timeout
        while (delivery := self.delivery(delivery_id)).status != status:
            if time.monotonic() > deadline:
                raise AssertionError(f"delivery stayed {delivery.status}, wanted {status}")
            time.sleep(0.05)
        return delivery
