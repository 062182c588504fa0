"""Two service processes on one PostgreSQL database and one consumer group: each event is
sent once, each retry is claimed by one of them, each attempt is audited once; when one is
SIGKILLed the other takes over its partitions and its claimed deliveries."""

import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from kafka.embedded import free_port
from tests.pipeline_support import (
    Broker,
    Receiver,
    Reply,
    audit_records,
    new_topic,
    pipeline_env,
    stream_events,
    wait_all_delivered,
    webhook_ids_by_event,
)
from tests.support import ServiceProcess, process_env, process_metric

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _instances(tmp_path: Path, env: dict[str, str]) -> list[ServiceProcess]:
    """Two instances of one deployment: same settings, their own gRPC and metrics ports."""
    out = []
    for name in ("a", "b"):
        own = env | {
            "WEBHOOKS_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
            "WEBHOOKS_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        }
        out.append(ServiceProcess(own, tmp_path / f"{name}.log"))
    return out


def _attempts_made(process: ServiceProcess) -> float:
    """webhooks_delivery_attempts_total of one instance, summed over its labels."""
    return process_metric(process, "webhooks_delivery_attempts_total{")


def _statuses(postgres_url: str) -> Counter[int]:
    with psycopg.connect(postgres_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM deliveries GROUP BY status")
        return Counter(dict(cur.fetchall()))


def test_two_instances_send_each_event_once_and_claim_each_retry_once(
    tmp_path: Path, broker: Broker, receiver: Receiver, postgres_url: str
) -> None:
    topic = new_topic(broker.bootstrap)
    env = process_env(
        tmp_path,
        postgres_url,
        # Every event's first attempt fails at one endpoint. Events that piled up while the
        # group formed made one instance fail 101 of them within 0.1 s (a CI run), before
        # any retry was due: at pipeline_env's threshold of 100 the circuit opened for its
        # 30 s cooldown, longer than the test waits. A breaker test, not this one.
        **pipeline_env(broker, topic)
        | {"WEBHOOKS_DELIVERY_LEASE_SECONDS": "20", "WEBHOOKS_CIRCUIT_FAILURES": "1000"},
    )
    a, b = _instances(tmp_path, env)
    ids = [f"evt-{n:04d}" for n in range(200)]
    try:
        a.start()
        b.start()
        a.subscribe(receiver.url("/once"))
        # Every delivery's first attempt fails: 200 retries for the two schedulers to claim.
        a.subscribe(receiver.reply_each("/retry", Reply(500), Reply(200)))
        stream_events(broker.bootstrap, topic, ids, pause=0.05).join(60)
        once = wait_all_delivered(receiver, "/once", ids, timeout=60)
        retried = wait_all_delivered(receiver, "/retry", ids, timeout=60)
        time.sleep(1.0)  # anything sent twice would arrive by now
        made = (_attempts_made(a), _attempts_made(b))
    finally:
        a.stop()
        b.stop()
    assert Counter(r.json["id"] for r in receiver.at("/once")) == dict.fromkeys(ids, 1)
    assert Counter(r.json["id"] for r in receiver.at("/retry")) == dict.fromkeys(ids, 2)
    assert all(len(webhook_ids) == 1 for webhook_ids in retried.values())
    assert all(made), f"both instances must have worked: attempts {made}"
    # Each attempt is on the audit topic exactly once: the outbox rows are claimed too.
    delivery_ids = {i for webhook_ids in [*once.values(), *retried.values()] for i in webhook_ids}
    expected = len(ids) * 3
    audited = audit_records(broker.bootstrap, delivery_ids, expected, timeout=30)
    time.sleep(1.0)
    audited = audit_records(broker.bootstrap, delivery_ids, expected, timeout=30)
    keys = Counter((r.delivery_id, r.attempt_number) for r in audited)
    assert len(keys) == expected and max(keys.values()) == 1


def test_the_survivor_takes_over_partitions_and_claimed_deliveries_of_a_killed_instance(
    tmp_path: Path, broker: Broker, receiver: Receiver, postgres_url: str
) -> None:
    topic = new_topic(broker.bootstrap)
    # Every event's first attempt fails, so a burst of them (the survivor's takeover) would
    # open the circuit for its 30 s cooldown: a breaker test, not this one.
    settings = pipeline_env(broker, topic) | {"WEBHOOKS_CIRCUIT_FAILURES": "1000"}
    env = process_env(tmp_path, postgres_url, **settings)
    a, b = _instances(tmp_path, env)
    ids = [f"evt-{n:04d}" for n in range(300)]
    try:
        a.start()
        b.start()
        # A failed first attempt and slow answers: at the kill, `a` holds claimed deliveries
        # in flight and queued, and retries wait in the store.
        a.subscribe(receiver.reply_each("/takeover", Reply(500), Reply(200, delay=0.05)))
        producer = stream_events(broker.bootstrap, topic, ids, pause=0.05)
        receiver.wait_for("/takeover", 150)
        # Killed while deliveries are owed: on a loaded machine the stream can fall behind
        # and leave a moment with none pending, which would test nothing.
        deadline = time.monotonic() + 20
        while not _statuses(postgres_url)[1] and time.monotonic() < deadline:
            time.sleep(0.02)
        a.kill()
        killed_at = len(webhook_ids_by_event(receiver, "/takeover", delivered_only=True))
        assert killed_at < len(ids), "every event was delivered before the kill"
        pending_at_kill = _statuses(postgres_url)[1]
        producer.join(60)
        wait_all_delivered(receiver, "/takeover", ids, timeout=90)
        # Answers `a` got but never recorded: the survivor sends those again after the lease.
        deadline = time.monotonic() + 30
        while (statuses := _statuses(postgres_url)) != {2: len(ids)}:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        seen = webhook_ids_by_event(receiver, "/takeover")
    finally:
        a.stop()
        b.stop()
    assert pending_at_kill > 0, "nothing was pending when the instance died"
    assert statuses == {2: len(ids)}, f"every delivery succeeded once taken over: {statuses}"
    # At least once; a delivery sent again by the survivor keeps its webhook-id.
    assert all(len(webhook_ids) == 1 for webhook_ids in seen.values())
