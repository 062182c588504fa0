"""Faults around the service: the broker frozen (SIGSTOP) while events flow, and endpoints
that fail in every way at once beside a healthy one."""

import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.pipeline_support import (
    Broker,
    Pipeline,
    Receiver,
    Reply,
    audit_records,
    cloud_event,
    new_topic,
    pipeline_env,
    produce_paced,
    stream_events,
    structured,
    wait_all_delivered,
)
from tests.support import ServiceProcess, process_env
from webhooks.v1 import events_pb2
from webhooks.v1 import webhook_service_pb2 as pb

pytestmark = pytest.mark.slow
E = events_pb2


def _serving(process: ServiceProcess) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{process.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _outbox_rows(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def test_broker_frozen_for_10_s_while_events_flow_loses_nothing(
    tmp_path: Path, broker: Broker, receiver: Receiver
) -> None:
    database = tmp_path / "outage.db"
    topic = new_topic(broker.bootstrap)
    env = process_env(tmp_path, f"sqlite:///{database}", **pipeline_env(broker, topic))
    service = ServiceProcess(env, tmp_path / "service.log").start()
    ids = [f"evt-{n:04d}" for n in range(300)]
    try:
        service.subscribe(receiver.reply("/steady", Reply(delay=0.02)))
        producer = stream_events(broker.bootstrap, topic, ids, pause=0.1)
        receiver.wait_for("/steady", 30)
        broker.pause()
        try:
            time.sleep(10)
            assert service.process is not None and service.process.poll() is None
        finally:
            broker.resume()
        producer.join(60)
        seen = wait_all_delivered(receiver, "/steady", ids, timeout=90)
        delivery_ids = {i for webhook_ids in seen.values() for i in webhook_ids}
        audited = audit_records(broker.bootstrap, delivery_ids, len(ids), timeout=60)
        deadline = time.monotonic() + 30
        while _outbox_rows(database) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _outbox_rows(database) == 0, "the audit outbox never drained"
        assert service.process is not None and service.process.poll() is None
        assert _serving(service)
    finally:
        service.stop()
    assert Counter(r.json["id"] for r in receiver.at("/steady")) == dict.fromkeys(ids, 1)
    assert {r.delivery_id for r in audited} == delivery_ids


def _chaos(seed: int, count: int) -> list[Reply]:
    """Random answers: errors, hangs past the timeout, resets, slow and quick successes."""
    rng = random.Random(seed)
    menu = [Reply(500), Reply(503), Reply(delay=3.0), Reply(reset=True), Reply(delay=0.3)]
    return [rng.choice([*menu, Reply(), Reply()]) for _ in range(count)]


def _all_deliveries(pipeline: Pipeline) -> list[Any]:
    out, token = [], ""
    while True:
        page = pipeline.api.call(
            "ListDeliveries", pb.ListDeliveriesRequest(page_size=100, page_token=token)
        )
        out.extend(page.deliveries)
        token = page.next_page_token
        if not token:
            return out


# The store is not what this tests; one database keeps the suite short.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sick_endpoints_end_per_schedule_and_leave_a_healthy_one_alone(
    make_pipeline: Any, receiver: Receiver
) -> None:
    schedule = "0.2,0.2"  # three attempts in all
    pipeline = make_pipeline(
        WEBHOOKS_RETRY_SCHEDULE=schedule,
        WEBHOOKS_ATTEMPT_TIMEOUT_SECONDS="1",
        WEBHOOKS_CIRCUIT_FAILURES="3",
        # An open circuit pauses an endpoint 0.1 s, doubling up to 1 s.
        WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS="0.1",
    )
    paths = {
        "/healthy": [Reply()],
        "/random": _chaos(seed=6, count=200),
        "/dead": [Reply(reset=True)],
        "/flapping": [*[Reply(500)] * 4, *[Reply()] * 4] * 25,
        "/slow": [Reply(delay=0.4)],
    }
    path_of = {
        pipeline.api.create(url=receiver.reply(path, *replies)).subscription.id: path
        for path, replies in paths.items()
    }
    events = [cloud_event("person.created", {"n": n}) for n in range(20)]
    # The first one waits until the consumer has joined its group and got the partitions.
    pipeline.send(structured(events[0]))
    receiver.wait_for("/healthy", 1, timeout=30)
    # The rest spread over ~4 s, so healthy deliveries happen while the sick ones hang
    # and retry.
    acked = produce_paced(
        pipeline.bootstrap, pipeline.topic, [structured(e) for e in events[1:]], interval=0.2
    )
    sent_at = {event["id"]: at for event, at in zip(events[1:], acked, strict=True)}
    wait_all_delivered(receiver, "/healthy", [e["id"] for e in events], timeout=30)

    deadline = time.monotonic() + 120
    while True:
        deliveries = _all_deliveries(pipeline)
        finished = [d for d in deliveries if d.status != E.DELIVERY_STATUS_PENDING]
        if len(deliveries) == len(events) * len(paths) and len(finished) == len(deliveries):
            break
        assert time.monotonic() < deadline, f"{len(finished)} of {len(deliveries)} finished"
        time.sleep(0.5)

    attempts_allowed = len(schedule.split(",")) + 1
    sent = Counter(r.headers["webhook-id"] for r in receiver.requests)
    for summary in deliveries:
        delivery = pipeline.delivery(summary.id)
        numbers = [a.attempt_number for a in delivery.attempts]
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), delivery
        # While a circuit is open an attempt is made without a request (and counts).
        requested = [a for a in delivery.attempts if a.error_kind != E.ERROR_KIND_CIRCUIT_OPEN]
        if path_of[delivery.subscription_id] in ("/dead", "/random"):
            # A keep-alive connection reset before any answer is retried by libcurl on
            # another connection within the same attempt (same webhook-id): README.
            assert len(requested) <= sent[delivery.id] <= 6 * len(requested)
        else:
            assert sent[delivery.id] == len(requested), "every request made is recorded, once"
        last = max(delivery.attempts, key=lambda a: a.attempt_number)
        if delivery.status == E.DELIVERY_STATUS_SUCCEEDED:
            assert 200 <= last.http_status < 300 and len(numbers) <= attempts_allowed
        else:
            assert delivery.status == E.DELIVERY_STATUS_FAILED
            assert len(numbers) == attempts_allowed, "failed before the schedule ran out"
            assert all(not 200 <= a.http_status < 300 for a in delivery.attempts)

    by_path = Counter(
        (r.path, r.status) for r in receiver.requests if r.path in ("/dead", "/healthy")
    )
    assert by_path[("/healthy", 200)] == len(events)
    statuses = Counter(d.status for d in deliveries)
    assert statuses[E.DELIVERY_STATUS_FAILED] >= len(events)  # /dead at least
    # The healthy endpoint never waited behind the sick ones (a hang lasts 3 s, a timeout 1 s).
    latencies = [
        r.at - sent_at[r.json["id"]] for r in receiver.at("/healthy") if r.json["id"] in sent_at
    ]
    assert max(latencies) < 0.8, f"healthy endpoint slowed to {max(latencies):.2f} s"
