"""End to end: events produced to Kafka as fast as possible, timed until the receiver has
every delivery and every attempt is on the audit topic; and produce-to-receipt latency at a
fixed offered rate. The service runs as its own process, as in production."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from kafka import topics
from kafka.connection import KafkaConnection
from kafka.embedded import EmbeddedBroker, free_port
from kafka.ingest import FLOWING_FETCH_WAIT_MS
from kafka.provisioning import TopicLayout, create_topics, service_topics
from service.crypto import new_encryption_key
from service.domain.access import ADMIN, hash_key, new_api_key
from tests.apache_kafka import KafkaCluster, started_cluster
from tests.support import ServiceProcess, process_metric
from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).parent.parent.parent
CATALOG = ROOT / "service" / "dev_catalog.json"
# 10 subscriptions over 3 tenants. Each tenant's events are spread over its types so that
# an event reaches 2 subscriptions on average: real fan-out, and per-endpoint lanes.
LAYOUT: dict[str, list[list[str]]] = {
    "acme": [["person.*"], ["person.created"], ["invoice.*"], ["*"]],
    "globex": [["person.created", "invoice.paid"], ["invoice.paid"], ["person.*"]],
    "initech": [["*"], ["person.created"], ["invoice.paid"]],
}
TYPES = ["person.created", "invoice.paid"]
PAD = "x" * 960  # with the other fields, about 1 KB of data per event
# Payload filters of the kinds users write (attributes, data fields, both), each true for
# every bench event: the row measures their cost, not fewer deliveries.
FILTERS = [
    "has(data.sent) && data.sent >= 0.0",
    'event.source == "bench" && size(data.pad) > 100',
    'event.type.startsWith("person.") || event.type.startsWith("invoice.")',
    '!has(data.test) && data.pad.startsWith("x")',
    'event.tenant in ["acme", "globex", "initech"] && data.sent >= 0.0',
]


def fan_out(tenant: str, event_type: str) -> int:
    def matches(patterns: list[str]) -> bool:
        return any(
            p == "*" or p == event_type or (p.endswith(".*") and event_type.startswith(p[:-1]))
            for p in patterns
        )

    return sum(matches(patterns) for patterns in LAYOUT[tenant])


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Receiver:
    """The receiver process (tests/bench/receiver.py)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.receiver", "--port", str(self.port)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == b"ready"
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=10) as response:
            stats: dict[str, Any] = json.loads(response.read())
            return stats

    def reset(self, latency: bool = False) -> None:
        url = f"{self.url}/reset?latency={int(latency)}"
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10).close()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@dataclass
class Stack:
    """A fresh broker and a service process on the given database."""

    workdir: Path
    database_url: str
    broker: "EmbeddedBroker | KafkaCluster"
    service: ServiceProcess
    keys: dict[str, str]
    topic: str

    @classmethod
    def start(
        cls,
        workdir: Path,
        database_url: str,
        broker_kind: str = "tansu",
        tenants: Sequence[str] = tuple(LAYOUT),
        **settings: str,
    ) -> "Stack":
        """`broker_kind`: "tansu" (the embedded default) or "apache" (one Apache Kafka node,
        with the fetch wait the compose stack uses for real Kafka); an API key per tenant."""
        workdir.mkdir(parents=True, exist_ok=True)
        broker = start_broker(broker_kind, workdir)
        if broker_kind == "apache":
            settings = {"WEBHOOKS_KAFKA_FETCH_MAX_WAIT_MS": "500", **settings}
        topic = "domain-events"
        layout = TopicLayout(partitions=6)
        asyncio.run(
            create_topics(KafkaConnection(broker.bootstrap), service_topics([topic]), layout)
        )
        keys = {tenant: new_api_key() for tenant in tenants}
        entries = [
            {"id": t, "sha256": hash_key(k), "tenant": t, "principal": t, "scopes": [ADMIN]}
            for t, k in keys.items()
        ]
        (workdir / "keys.json").write_text(json.dumps({"keys": entries}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
        env |= {
            "WEBHOOKS_API_KEYS_FILE": str(workdir / "keys.json"),
            "WEBHOOKS_SECRET_ENCRYPTION_KEYS": new_encryption_key(),
            "WEBHOOKS_DATABASE_URL": database_url,
            "WEBHOOKS_EVENT_TYPES_FILE": str(CATALOG),
            "WEBHOOKS_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
            "WEBHOOKS_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
            "WEBHOOKS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "WEBHOOKS_KAFKA_IDEMPOTENCE": str(broker.supports_idempotence).lower(),
            "WEBHOOKS_KAFKA_TOPICS": topic,
            "WEBHOOKS_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "WEBHOOKS_ALLOW_HTTP": "true",
            "WEBHOOKS_SSRF_ALLOW_CIDRS": "127.0.0.0/8",
            "WEBHOOKS_LOG_LEVEL": "WARNING",
            **settings,
        }
        service = ServiceProcess(env, workdir / "service.log").start(timeout=60)
        return cls(workdir, database_url, broker, service, keys, topic)

    def subscribe(
        self,
        receiver_url: str,
        template: str = "",
        filtered: bool = False,
        ordered: bool = False,
    ) -> None:
        """The LAYOUT's subscriptions; with `template`, each sends that payload template;
        `filtered`: each has one of FILTERS; `ordered`: each orders per key."""
        payload: dict[str, Any] = (
            {"payload_format": pb.PAYLOAD_FORMAT_TEMPLATE, "payload_template": template}
            if template
            else {}
        )
        made = 0
        with grpc.insecure_channel(f"127.0.0.1:{self.service.port}") as channel:
            stub = pb_grpc.WebhookServiceStub(channel)
            for tenant, subscriptions in LAYOUT.items():
                for n, patterns in enumerate(subscriptions):
                    stub.CreateSubscription(
                        pb.CreateSubscriptionRequest(
                            subscription=pb.Subscription(
                                name=f"{tenant}-{n}",
                                url=f"{receiver_url}/hook",
                                event_types=patterns,
                                filter=FILTERS[made % len(FILTERS)] if filtered else "",
                                ordering=pb.ORDERING_PER_KEY if ordered else pb.ORDERING_NONE,
                                **payload,
                            )
                        ),
                        metadata=(("authorization", f"Bearer {self.keys[tenant]}"),),
                        timeout=10,
                    )
                    made += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The service, its delivery worker and the broker stopped (SIGSTOP) meanwhile: a
        reference measured beside the idle stack would lose the ~12% of a core it polls with
        and flatter the ratio. Keep it shorter than the consumer's session timeout."""
        assert self.service.process is not None
        service = self.service.process.pid
        children = subprocess.run(
            ["pgrep", "-P", str(service)], capture_output=True, text=True, check=False
        ).stdout.split()
        pids = [service, *map(int, children), *broker_pids(self.broker)]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in reversed(pids):
                os.kill(pid, signal.SIGCONT)

    def metric(self, name: str) -> float:
        """A sample of the service's /metrics without labels (0 when absent)."""
        return process_metric(self.service, f"{name} ")

    def cpu_seconds(self) -> float:
        """CPU time the service and its delivery workers used so far."""
        assert self.service.process is not None
        service = self.service.process.pid
        children = subprocess.run(
            ["pgrep", "-P", str(service)], capture_output=True, text=True, check=False
        ).stdout.split()
        total = 0.0
        for pid in [service, *map(int, children)]:
            with contextlib.suppress(FileNotFoundError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        self.service.stop()
        self.broker.stop()


# Deliveries per event of `events`, on average.
MEAN_FAN_OUT = sum(fan_out(t, e) for t in LAYOUT for e in TYPES) / (len(LAYOUT) * len(TYPES))


def events(count: int, start: int = 0) -> list[tuple[str, str, int]]:
    """(tenant, type, expected deliveries) of each event, round-robin."""
    tenants = list(LAYOUT)
    out = []
    for n in range(start, start + count):
        tenant, event_type = tenants[n % 3], TYPES[(n // 3) % 2]
        out.append((tenant, event_type, fan_out(tenant, event_type)))
    return out


def record(tenant: str, event_type: str, sent: float) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "bench",
            "type": event_type,
            "tenant": tenant,
            "time": "2026-01-01T00:00:00Z",
            "datacontenttype": "application/json",
            "data": {"sent": sent, "pad": PAD},
        }
    ).encode()


HEADERS = [("content-type", b"application/cloudevents+json")]


async def _producer(bootstrap: str) -> AIOKafkaProducer:
    # No linger of its own: the batches are built here and go out as they are handed over.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=1024 * 1024, acks=1
    )
    await producer.start()
    return producer


async def produce_all(
    bootstrap: str, topic: str, records: list[bytes], keys: int = 0, to_partition: int | None = None
) -> None:
    """Record batches appended directly, round-robin over the partitions (or all to
    `to_partition`): the producer shares the machine with what it measures, and a send() per
    record cost it ~30 us of CPU per event against ~8 us. With `keys`, event n has the
    record key n % keys, and each key one partition."""
    producer = await _producer(bootstrap)
    try:
        partitions = sorted(await producer.partitions_for(topic))
        if to_partition is not None:
            partitions = [to_partition]
        batches = {p: producer.create_batch() for p in partitions}
        pending = []
        for n, value in enumerate(records):
            key = f"key-{n % keys}".encode() if keys else None
            partition = partitions[(n % keys if keys else n) % len(partitions)]
            batch = batches[partition]
            if batch.append(timestamp=None, key=key, value=value, headers=HEADERS) is None:
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value, headers=HEADERS)
        for partition, batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# The Java client's defaults: a batch goes out once it is 5 ms old (linger.ms since Kafka
# 4.0) or full (batch.size, 16 KB: 16 of our ~1 KB events), and the next batch goes to the
# next partition (its sticky partitioning of records without a key).
LINGER_SECONDS = 0.005
BATCH_RECORDS = 16


async def produce_at_rate(
    bootstrap: str,
    topic: str,
    plan: list[tuple[str, str, int]],
    per_second: float,
    to_partition: int | None = None,
) -> None:
    """Event n is due at start + n / per_second and stamped with that time; the events due
    within a batch's window go out as the Java client would send them (above). So each
    latency counts from when its event was due, and this process wakes once a batch (with
    aiokafka's own send() per record it took ~21% of a core at 1,000 events/s beside what it
    measures, ~15% now). aiokafka also picks a random partition for each record: ~6x the
    batches, and every batch stored in tansu's memory storage makes each later fetch of its
    partition slower (broker alone, p99 35-66 against 14-16 ms)."""
    producer = await _producer(bootstrap)
    try:
        partitions = sorted(await producer.partitions_for(topic))
        if to_partition is not None:
            partitions = [to_partition]
        sent: list[asyncio.Future[Any]] = []
        started, wall = time.monotonic(), time.time()
        n = 0
        while n < len(plan):
            last = min(n + BATCH_RECORDS, len(plan)) - 1
            closes = min(n / per_second + LINGER_SECONDS, last / per_second)
            delay = started + closes - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            batch = producer.create_batch()
            while n <= last and n / per_second <= closes:
                tenant, event_type, _ = plan[n]
                value = record(tenant, event_type, wall + n / per_second)
                batch.append(timestamp=None, key=None, value=value, headers=HEADERS)
                n += 1
            partition = partitions[len(sent) % len(partitions)]
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def audit_ends(bootstrap: str) -> dict[TopicPartition, int]:
    """Where each partition of the audit topic ends now: a run counts what comes after."""
    consumer = AIOKafkaConsumer(topics.DELIVERY_ATTEMPTS_TOPIC, bootstrap_servers=bootstrap)
    await consumer.start()  # without a group it takes every partition of the topic
    try:
        await consumer.getmany(timeout_ms=100)  # waits for the assignment
        return dict(await consumer.end_offsets(list(consumer.assignment())))
    finally:
        await consumer.stop()


async def count_audit(
    bootstrap: str, expected: int, deadline: float, after: dict[TopicPartition, int]
) -> int:
    """Audit records after the offsets `after` (from audit_ends before the run)."""
    if not after:
        raise RuntimeError("the audit topic has no partitions")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer.assign(list(after))
    for partition, offset in after.items():
        consumer.seek(partition, offset)
    seen = 0
    try:
        while seen < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            seen += sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()
    return seen


def wait_received(receiver: Receiver, expected: int, deadline: float) -> int:
    while True:
        count = int(receiver.stats()["count"])
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def throughput(
    stack: Stack, receiver: Receiver, count: int, timeout: float, keys: int = 0
) -> dict[str, float]:
    """Deliveries/s from the first produce until all deliveries arrived and were audited;
    `keys`: the events carry that many record keys (ordering keys)."""
    plan = events(count)
    records = [record(tenant, event_type, 0.0) for tenant, event_type, _ in plan]
    return deliver(stack, receiver, records, sum(n for _, _, n in plan), timeout, keys)


def deliver(
    stack: Stack,
    receiver: Receiver,
    records: list[bytes],
    expected: int,
    timeout: float,
    keys: int = 0,
) -> dict[str, float]:
    """Produces the records and times until the receiver got `expected` requests and their
    attempts were audited (but those of requests it never answers); with the CPU time the
    service and its workers spent per delivery meanwhile."""
    receiver.reset()
    after = asyncio.run(audit_ends(stack.broker.bootstrap))
    cpu = stack.cpu_seconds()
    started = time.monotonic()
    deadline = started + timeout
    asyncio.run(produce_all(stack.broker.bootstrap, stack.topic, records, keys))
    produced = time.monotonic()
    received = wait_received(receiver, expected, deadline)
    delivered = time.monotonic()
    answered = expected - int(receiver.stats()["hung"])
    audited = asyncio.run(count_audit(stack.broker.bootstrap, answered, deadline, after))
    finished = time.monotonic()
    if received < expected or audited < answered:
        raise RuntimeError(
            f"incomplete: {received}/{expected} received, {audited}/{answered} audited"
        )
    return {
        "events": len(records),
        "deliveries": expected,
        "produce_s": produced - started,
        "deliver_s": delivered - started,
        "total_s": finished - started,
        "deliveries_per_s": expected / (finished - started),
        "cpu_us_per_delivery": (stack.cpu_seconds() - cpu) * 1e6 / expected,
    }


def latency(
    stack: Stack, receiver: Receiver, per_second: float, seconds: float
) -> dict[str, float]:
    receiver.reset(latency=True)
    plan = events(int(per_second * seconds))
    expected = sum(n for _, _, n in plan)
    asyncio.run(produce_at_rate(stack.broker.bootstrap, stack.topic, plan, per_second))
    wait_received(receiver, expected, time.monotonic() + 60)
    samples: list[float] = receiver.stats()["latencies_ms"]
    if len(samples) < expected:
        raise RuntimeError(f"latency run: {len(samples)}/{expected} received")
    return {"deliveries": expected, **percentiles(samples)}


# The smoke run (the suite's) measures nothing: its Apache Kafka node may compile with C1
# only, as the suite's other nodes do, sparing CPU the parallel suite shares.
APACHE_QUICK_JIT = False


def start_broker(kind: str, workdir: Path) -> "EmbeddedBroker | KafkaCluster":
    if kind == "apache":
        root = workdir / "kafka"
        return started_cluster(root, lambda: KafkaCluster(root, quick_jit=APACHE_QUICK_JIT))
    broker = EmbeddedBroker(free_port())
    broker.start()
    return broker


def broker_pids(broker: "EmbeddedBroker | KafkaCluster") -> list[int]:
    if isinstance(broker, KafkaCluster):
        return [n.process.pid for n in broker.nodes if n.process is not None]
    return [broker.process.pid] if broker.process is not None else []


def broker_floor(
    per_second: float, seconds: float, workdir: Path, kind: str = "tansu"
) -> dict[str, float]:
    """The same producer at the same rate into a fresh broker, read by a bare consumer with
    the service's fetch settings: the part of the latency the broker alone takes. tansu's
    memory storage gets slower as batches pile up (its fetches cost more with every batch
    stored), so it needs the same duration as the service's run to compare."""
    broker = start_broker(kind, workdir)
    try:
        topic = "domain-events"
        asyncio.run(
            create_topics(KafkaConnection(broker.bootstrap), [topic], TopicLayout(partitions=6))
        )
        plan = events(int(per_second * seconds))
        samples = asyncio.run(_produce_and_consume(broker.bootstrap, topic, plan, per_second))
    finally:
        broker.stop()
    return {"events": len(plan), **percentiles(samples)}


async def _produce_and_consume(
    bootstrap: str, topic: str, plan: list[tuple[str, str, int]], per_second: float
) -> list[float]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="floor",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FLOWING_FETCH_WAIT_MS,  # the service's while records flow
    )
    await consumer.start()
    samples: list[float] = []

    async def consume() -> None:
        while len(samples) < len(plan):
            batches = await consumer.getmany(timeout_ms=200, max_records=200)
            now = time.time()
            for records in batches.values():
                for record in records:
                    samples.append((now - json.loads(record.value)["data"]["sent"]) * 1000)
            if batches:
                await consumer.commit()

    try:
        await consumer.getmany(timeout_ms=1000)  # joined and assigned before the first send
        reading = asyncio.create_task(consume())
        await produce_at_rate(bootstrap, topic, plan, per_second)
        await asyncio.wait_for(reading, 60)
    finally:
        await consumer.stop()
    return samples


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": ordered[-1]}
