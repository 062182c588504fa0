"""Ordered delivery across a SIGKILL and restart, and across a failover between two
instances on PostgreSQL: per key, an event never arrives before the one produced ahead of it
was answered 2xx, whatever died in between (at least once: the event in flight at a crash
may come again)."""

import json
import threading
import time
from pathlib import Path

import pytest

from kafka.embedded import free_port
from tests.pipeline_support import (
    Broker,
    Received,
    Receiver,
    Record,
    Reply,
    cloud_event,
    new_topic,
    pipeline_env,
    produce,
)
from tests.support import ServiceProcess, process_env
from webhooks.v1 import webhook_service_pb2 as pb

pytestmark = pytest.mark.slow
KEYS = [f"key-{k:02d}" for k in range(20)]
PER_KEY = 15
HEADERS = [("content-type", b"application/cloudevents+json")]


def stream_keyed(bootstrap: str, topic: str) -> threading.Thread:
    """PER_KEY events for each of KEYS, round after round, in the background."""

    def run() -> None:
        for n in range(PER_KEY):
            batch: list[Record] = [
                (
                    key.encode(),
                    json.dumps(cloud_event("person.created", {"key": key, "n": n})).encode(),
                    HEADERS,
                )
                for key in KEYS
            ]
            produce(bootstrap, topic, batch)
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_all_ordered(receiver: Receiver, path: str, timeout: float) -> list[Received]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = {(r.json["data"]["key"], r.json["data"]["n"]) for r in receiver.at(path)}
        if len({d for d in done if d[1] == PER_KEY - 1}) == len(KEYS):
            time.sleep(0.5)  # a last duplicate, if any, arrives too
            return receiver.at(path)
        time.sleep(0.1)
    raise AssertionError(f"not every key's last event arrived at {path}")


def assert_in_order(requests: list[Received]) -> None:
    """Per key: n never goes back, and event n+1 comes only after n was answered 2xx."""
    by_key: dict[str, list[tuple[int, int]]] = {}
    for r in requests:
        data = r.json["data"]
        by_key.setdefault(data["key"], []).append((data["n"], r.status))
    assert sorted(by_key) == KEYS
    for key, arrivals in by_key.items():
        numbers = [n for n, _ in arrivals]
        assert numbers == sorted(numbers), f"{key} went back: {arrivals}"
        assert sorted(set(numbers)) == list(range(PER_KEY)), f"{key} lost events: {arrivals}"
        for n in range(1, PER_KEY):
            first_next = numbers.index(n)
            answered = [s for m, s in arrivals[:first_next] if m == n - 1]
            assert 200 in answered, f"{key}: {n} came before {n - 1} was delivered: {arrivals}"


def test_order_per_key_holds_across_sigkill_and_restart(
    database_url: str,
    tmp_path: Path,
    broker: Broker,
    receiver: Receiver,
) -> None:
    topic = new_topic(broker.bootstrap)
    settings = pipeline_env(broker, topic) | {"WEBHOOKS_CIRCUIT_FAILURES": "1000"}
    env = process_env(tmp_path, database_url, **settings)
    first = ServiceProcess(env, tmp_path / "first.log").start()
    second = ServiceProcess(env, tmp_path / "second.log")
    try:
        # Every event fails once: each key's retries interleave with the crash.
        url = receiver.reply_each("/ordered", Reply(500), Reply(200, delay=0.02))
        first.subscribe(url, ordering=pb.ORDERING_PER_KEY)
        producer = stream_keyed(broker.bootstrap, topic)
        receiver.wait_for("/ordered", 80)
        first.kill()
        assert len(receiver.at("/ordered")) < 2 * len(KEYS) * PER_KEY, "nothing left to test"
        second.start()
        producer.join(60)
        got = wait_all_ordered(receiver, "/ordered", timeout=90)
    finally:
        first.stop()
        second.stop()
    assert_in_order(got)


@pytest.mark.postgres
def test_order_per_key_holds_when_the_survivor_takes_over(
    tmp_path: Path, broker: Broker, receiver: Receiver, postgres_url: str
) -> None:
    topic = new_topic(broker.bootstrap)
    settings = pipeline_env(broker, topic) | {"WEBHOOKS_CIRCUIT_FAILURES": "1000"}
    env = process_env(tmp_path, postgres_url, **settings)
    instances = [
        # Each its own gRPC port; metrics on any free port (base_env's 127.0.0.1:0).
        ServiceProcess(
            env | {"WEBHOOKS_GRPC_ADDRESS": f"127.0.0.1:{free_port()}"}, tmp_path / f"{name}.log"
        )
        for name in ("a", "b")
    ]
    a, b = instances
    try:
        a.start()
        b.start()
        url = receiver.reply_each("/ordered", Reply(500), Reply(200, delay=0.02))
        a.subscribe(url, ordering=pb.ORDERING_PER_KEY)
        producer = stream_keyed(broker.bootstrap, topic)
        receiver.wait_for("/ordered", 80)
        a.kill()
        assert len(receiver.at("/ordered")) < 2 * len(KEYS) * PER_KEY, "nothing left to test"
        producer.join(60)
        got = wait_all_ordered(receiver, "/ordered", timeout=90)
    finally:
        a.stop()
        b.stop()
    assert_in_order(got)
