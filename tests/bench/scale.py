"""Realistic shapes beside the default one (10 subscriptions on one fast receiver): many slow
endpoints, a big fan-out, many subscriptions stored, and a noisy tenant beside a quiet one.
Each shape says which tenants need keys, which settings differ, how its subscriptions are
made and what its events are."""

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from tests.bench import e2e
from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc

# Slow many: 1,000 subscriptions over 100 tenants, each its own endpoint on one of the
# receiver's 20 hosts, answering as slow endpoints do (tests/bench/receiver.py, /slow).
SLOW_TENANTS = [f"tenant-{n:03d}" for n in range(100)]
SLOW_PER_TENANT = 10
# Each of a tenant's subscriptions takes one of these types (none with a schema in the
# catalog): an event reaches two of them.
SLOW_TYPES = [
    "lead.updated",
    "lead.deleted",
    "meeting.booked",
    "person.created",
    "organization.merged",
]
FAN_OUT = 1000  # big fan-out: one tenant's subscriptions, each taking every event
STORED = 100_000  # many stored: subscriptions of other tenants beside the default ones
NOISY, QUIET = "noisy", "quiet"
NOISY_DELIVERIES = 100_000  # pending for the noisy tenant when the quiet one's events come
# Its subscriptions, each on a slow endpoint: together they could hold more than the capacity.
NOISY_SUBSCRIPTIONS = 10


def _create(stack: e2e.Stack, subscriptions: list[tuple[str, pb.Subscription]]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{stack.service.port}") as channel:
        stub = pb_grpc.WebhookServiceStub(channel)
        for tenant, subscription in subscriptions:
            stub.CreateSubscription(
                pb.CreateSubscriptionRequest(subscription=subscription),
                metadata=(("authorization", f"Bearer {stack.keys[tenant]}"),),
                timeout=10,
            )


def _subscribe_slow(stack: e2e.Stack, receiver: e2e.Receiver) -> None:
    made = []
    for t, tenant in enumerate(SLOW_TENANTS):
        for n in range(SLOW_PER_TENANT):
            host = f"127.0.0.{(t * SLOW_PER_TENANT + n) % 20 + 1}"
            made.append(
                (
                    tenant,
                    pb.Subscription(
                        name=f"slow-{n}",
                        url=f"http://{host}:{receiver.port}/slow/{t}/{n}",
                        event_types=[SLOW_TYPES[n % len(SLOW_TYPES)]],
                    ),
                )
            )
    _create(stack, made)


def _slow_events(deliveries: int) -> tuple[list[bytes], int]:
    count = deliveries // 2
    records = [
        e2e.record(
            SLOW_TENANTS[n % len(SLOW_TENANTS)],
            SLOW_TYPES[(n // len(SLOW_TENANTS)) % len(SLOW_TYPES)],
            0.0,
        )
        for n in range(count)
    ]
    return records, count * 2


def _subscribe_fan_out(stack: e2e.Stack, receiver: e2e.Receiver) -> None:
    _create(
        stack,
        [
            (NOISY, pb.Subscription(name=f"fan-{n}", url=f"{receiver.url}/hook"))
            for n in range(FAN_OUT)
        ],
    )


def _fan_out_events(deliveries: int) -> tuple[list[bytes], int]:
    count = max(2, deliveries // FAN_OUT)
    return [e2e.record(NOISY, "person.created", 0.0) for _ in range(count)], count * FAN_OUT


def _default_events(deliveries: int) -> tuple[list[bytes], int]:
    plan = e2e.events(int(deliveries / e2e.MEAN_FAN_OUT))
    records = [e2e.record(tenant, event_type, 0.0) for tenant, event_type, _ in plan]
    return records, sum(n for _, _, n in plan)


def _subscribe_stored(stack: e2e.Stack, receiver: e2e.Receiver) -> None:
    """The default subscriptions, and STORED more of 1,000 other tenants, written straight to
    the database (through the API they would take minutes)."""
    stack.subscribe(receiver.url)
    assert stack.database_url.startswith("sqlite:///")
    db = sqlite3.connect(stack.database_url.removeprefix("sqlite:///"), timeout=30)
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(subscriptions)")]
        (template,) = db.execute(
            f"SELECT {', '.join(columns)} FROM subscriptions LIMIT 1"
        ).fetchall()
        rows = []
        for n in range(STORED):
            row = dict(zip(columns, template, strict=True))
            row |= {"id": f"sub_stored{n:09d}", "tenant": f"other-{n % 1000}", "name": f"s{n}"}
            rows.append(tuple(row[c] for c in columns))
        marks = ", ".join("?" * len(columns))
        with db:
            db.executemany(
                f"INSERT INTO subscriptions ({', '.join(columns)}) VALUES ({marks})",
                rows,
            )
    finally:
        db.close()


@dataclass(frozen=True)
class Shape:
    """`events(deliveries)` gives records making about that many deliveries, and how many."""

    tenants: tuple[str, ...]
    subscribe: Callable[[e2e.Stack, e2e.Receiver], None]
    events: Callable[[int], tuple[list[bytes], int]]
    settings: dict[str, str] = field(default_factory=dict)
    # Runs this many times as long as the default shape's: a run ends with its endpoints'
    # slowest answers (a second or more with slow ones), which a short run would measure
    # more than the service's rate.
    longer: int = 1


SHAPES = {
    "slow_many": Shape(
        tuple(SLOW_TENANTS),
        _subscribe_slow,
        _slow_events,
        # Failed attempts retry after the run, hung ones give up after 5 s: the run counts
        # first attempts.
        {"WEBHOOKS_RETRY_SCHEDULE": "600", "WEBHOOKS_ATTEMPT_TIMEOUT_SECONDS": "5"},
        longer=3,
    ),
    "fan_out": Shape((NOISY,), _subscribe_fan_out, _fan_out_events),
    "many_stored": Shape(tuple(e2e.LAYOUT), _subscribe_stored, _default_events),
}


def fairness(
    stack: e2e.Stack,
    receiver: e2e.Receiver,
    per_second: float,
    seconds: float,
    stored_first: bool,
) -> dict[str, Any]:
    """The quiet tenant sends an event to its fast endpoint every 1/`per_second` s. Then
    the noisy tenant's burst, NOISY_DELIVERIES deliveries to slow endpoints (which take
    ~600 a second), is produced at once, and the quiet tenant's events go on for `seconds`
    on another partition: their produce-to-receipt latency while the burst is pending. With
    `stored_first` they go on once every delivery of the burst was stored, else at once,
    while most of it still waits in Kafka ahead of them."""
    quiet = [(QUIET, "person.created", 1)] * int(per_second)
    receiver.reset()
    asyncio.run(
        e2e.produce_at_rate(stack.broker.bootstrap, stack.topic, quiet, per_second, to_partition=3)
    )
    if e2e.wait_received(receiver, len(quiet), time.monotonic() + 60) < len(quiet):
        raise RuntimeError("the quiet tenant's first events never arrived")
    receiver.reset(latency=True)
    events = NOISY_DELIVERIES // NOISY_SUBSCRIPTIONS
    burst = [e2e.record(NOISY, "person.created", 0.0) for _ in range(events)]
    stored = stack.metric("webhooks_deliveries_created_total")
    asyncio.run(e2e.produce_all(stack.broker.bootstrap, stack.topic, burst, to_partition=0))
    deadline = time.monotonic() + 120
    while stored_first and stack.metric("webhooks_deliveries_created_total") - stored < (
        NOISY_DELIVERIES
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the noisy burst was never stored")
        time.sleep(0.2)
    receiver.reset(latency=True)
    plan = quiet * int(seconds)
    asyncio.run(
        e2e.produce_at_rate(stack.broker.bootstrap, stack.topic, plan, per_second, to_partition=3)
    )
    deadline = time.monotonic() + 60
    while len(receiver.stats()["latencies_ms"]) < len(plan) and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = receiver.stats()
    samples: list[float] = stats["latencies_ms"]
    if len(samples) < len(plan):
        raise RuntimeError(f"fairness run: {len(samples)}/{len(plan)} quiet events received")
    return {
        "quiet_events": len(plan),
        "noisy_stored": stack.metric("webhooks_deliveries_created_total") - stored,
        **e2e.percentiles(samples),
    }


def subscribe_fairness(stack: e2e.Stack, receiver: e2e.Receiver) -> None:
    _create(
        stack,
        [
            *(
                (NOISY, pb.Subscription(name=f"noisy-{n}", url=f"{receiver.url}/lag/{n}"))
                for n in range(NOISY_SUBSCRIPTIONS)
            ),
            (QUIET, pb.Subscription(name="quiet", url=f"{receiver.url}/hook")),
        ],
    )
