"""Failures only a real broker has, on Apache Kafka: a node killed with its data on disk and
restarted, a partition leader killed in a cluster of three, every broker restarted in turn.
Each counts deliveries at the receiver and records on the audit topic, fails if anything is
lost, and reports the duplicates at the end of the run."""

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kafka import topics
from kafka.connection import KafkaConnection
from kafka.embedded import free_port
from kafka.provisioning import TopicLayout, create_topics, service_topics
from service.api.server import KAFKA_HEALTH
from tests.apache_kafka import FAILURE_REPORT, KafkaCluster, cluster_for
from tests.pipeline_support import (
    Receiver,
    audit_records,
    cloud_event,
    pipeline_env,
    structured,
    webhook_ids_by_event,
)
from tests.support import ServiceProcess, process_env

# One worker runs them all: they share its cluster of three.
pytestmark = [pytest.mark.slow, pytest.mark.apache_kafka, pytest.mark.xdist_group("kafka-cluster")]


class Stream:
    """Produces `person.created` events in groups of 10 in the background, each group sent
    again until the cluster acknowledged it (a copy is the same event, delivered once);
    `count` of them, or with None until `finish()`. `ids` are those acknowledged."""

    def __init__(self, bootstrap: str, topic: str, count: int | None, pause: float) -> None:
        self.ids: list[str] = []
        self._count = count
        self._finished = threading.Event()
        self._bootstrap = bootstrap
        self._topic = topic
        self._pause = pause
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> "Stream":
        self._thread.start()
        return self

    def finish(self) -> None:
        self._finished.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the producer never got every event acknowledged"

    def _more(self) -> bool:
        if self._count is None:
            return not self._finished.is_set()
        return len(self.ids) < self._count

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            while self._more():
                ids = [f"evt-{n:05d}" for n in range(len(self.ids), len(self.ids) + 10)]
                group = [
                    structured(cloud_event("person.created", {"n": i}, event_id=i)) for i in ids
                ]
                while True:
                    try:
                        sent = [
                            await producer.send(self._topic, key=k, value=v, headers=h)
                            for k, v, h in group
                        ]
                        await asyncio.gather(*sent)
                        break
                    except KafkaError:
                        await asyncio.sleep(0.5)
                self.ids.extend(ids)
                await asyncio.sleep(self._pause)
        finally:
            await producer.stop()


@pytest.fixture(scope="session")
def cluster_of_three(request: pytest.FixtureRequest) -> Iterator[KafkaCluster]:
    """Session-wide on the one worker that runs these tests: under xdist other modules' tests
    run between them, and a module-scoped cluster would be started anew for each."""
    with cluster_for(request, size=3) as cluster:
        asyncio.run(create_topics(KafkaConnection(cluster.bootstrap), service_topics([])))
        yield cluster


@pytest.fixture
def single_node(request: pytest.FixtureRequest) -> Iterator[KafkaCluster]:
    """A node of this test's own: it gets killed."""
    with cluster_for(request, size=1) as cluster:
        asyncio.run(create_topics(KafkaConnection(cluster.bootstrap), service_topics([])))
        yield cluster


def _kafka_health(service: ServiceProcess) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=KAFKA_HEALTH), timeout=5
        )
    return int(reply.status)


def _consumed(metrics_port: int) -> float:
    """Events an instance accepted from Kafka, from its metrics."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    except urllib.error.URLError:  # health says SERVING a moment before metrics listen
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith('webhooks_events_consumed_total{outcome="accepted"')
    )


def _wait(condition: Any, timeout: float, what: str) -> float:
    """Polls until `condition()` holds; returns when (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)
    return time.monotonic()


def _start(tmp_path: Path, cluster: KafkaCluster, receiver: Receiver) -> tuple[ServiceProcess, str]:
    topic = f"events-{tmp_path.name[-12:]}".replace("_", "-")
    asyncio.run(
        create_topics(KafkaConnection(cluster.bootstrap), [topic], TopicLayout(partitions=3))
    )
    env = process_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'webhooks.db'}",
        **(pipeline_env(cluster, topic) | {"WEBHOOKS_KAFKA_SESSION_TIMEOUT_MS": "6000"}),
    )
    service = ServiceProcess(env, tmp_path / "service.log").start()
    service.subscribe(receiver.url("/failures"))
    return service, topic


def _check_nothing_lost(
    request: pytest.FixtureRequest,
    name: str,
    cluster: KafkaCluster,
    receiver: Receiver,
    stream: Stream,
) -> None:
    """Every event delivered (2xx) and every delivery audited; duplicates reported."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        delivered = webhook_ids_by_event(receiver, "/failures", delivered_only=True)
        if set(stream.ids) <= set(delivered):
            break
        time.sleep(0.2)
    delivered = webhook_ids_by_event(receiver, "/failures", delivered_only=True)
    lost = sorted(set(stream.ids) - set(delivered))
    counts = Counter(r.json["id"] for r in receiver.at("/failures"))
    duplicates = sum(n - 1 for n in counts.values())
    delivery_ids = {i for ids in delivered.values() for i in ids}
    audited = audit_records(cluster.bootstrap, delivery_ids, len(delivery_ids), timeout=60)
    unaudited = delivery_ids - {r.delivery_id for r in audited}
    request.config.stash.setdefault(FAILURE_REPORT, []).append(
        f"Kafka, {name}: {len(stream.ids)} events, {len(stream.ids) - len(lost)} delivered,"
        f" {len(lost)} lost, {duplicates} duplicate requests; {len(audited)} audit records"
        f" of {len({r.attempt_id for r in audited})} attempts for {len(delivery_ids)} deliveries"
    )
    assert not lost, f"{len(lost)} events never delivered, e.g. {lost[:5]}"
    assert not unaudited, f"{len(unaudited)} deliveries without an audit record"


def test_a_killed_node_restarted_on_its_log_dir_loses_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, single_node: KafkaCluster, receiver: Receiver
) -> None:
    service, topic = _start(tmp_path, single_node, receiver)
    node = single_node.nodes[0]
    try:
        _wait(
            lambda: _kafka_health(service) == health_pb2.HealthCheckResponse.SERVING,
            15,
            "health never said Kafka answers",
        )
        stream = Stream(single_node.bootstrap, topic, 300, pause=0.05).start()
        receiver.wait_for("/failures", 40)
        node.kill()
        _wait(
            lambda: _kafka_health(service) == health_pb2.HealthCheckResponse.NOT_SERVING,
            15,
            "health never said the broker is away",
        )
        time.sleep(3)
        node.start()
        single_node.wait_ready()
        back = time.monotonic()
        before = len(receiver.at("/failures"))
        flowing = _wait(
            lambda: len(receiver.at("/failures")) > before, 30, "no delivery after the return"
        )
        assert flowing - back <= 10, f"deliveries resumed {flowing - back:.1f} s after"
        _wait(
            lambda: _kafka_health(service) == health_pb2.HealthCheckResponse.SERVING,
            15,
            "health never said the broker is back",
        )
        stream.join(120)
        _check_nothing_lost(request, "one node killed and restarted", single_node, receiver, stream)
        assert service.process is not None and service.process.poll() is None  # never restarted
    finally:
        service.stop()


def test_killing_the_partition_leader_in_a_cluster_of_three_loses_nothing(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cluster_of_three: KafkaCluster,
    receiver: Receiver,
) -> None:
    cluster = cluster_of_three
    service, topic = _start(tmp_path, cluster, receiver)
    try:
        stream = Stream(cluster.bootstrap, topic, 300, pause=0.05).start()
        receiver.wait_for("/failures", 30)
        leader = cluster.leader(topic, 0)
        audit_leaders = {
            cluster.leader(topics.DELIVERY_ATTEMPTS_TOPIC, p).node_id for p in range(3)
        }
        assert leader.node_id in audit_leaders  # it leads an audit partition too
        leader.kill()
        killed = len(receiver.at("/failures"))
        # Deliveries go on while it is down: the other two elect new leaders.
        _wait(lambda: len(receiver.at("/failures")) >= killed + 30, 40, "deliveries stalled")
        leader.start()
        cluster.wait_ready()
        stream.join(120)
        _check_nothing_lost(request, "partition leader killed (3 nodes)", cluster, receiver, stream)
    finally:
        service.stop()


def test_restarting_every_broker_in_turn_loses_nothing(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cluster_of_three: KafkaCluster,
    receiver: Receiver,
) -> None:
    cluster = cluster_of_three
    service, topic = _start(tmp_path, cluster, receiver)
    try:
        stream = Stream(cluster.bootstrap, topic, 400, pause=0.05).start()
        receiver.wait_for("/failures", 20)
        for node in cluster.nodes:
            node.stop()  # a controlled shutdown: its leaderships move first
            node.start()
            cluster.wait_ready()
            cluster.wait_in_sync()
        stream.join(120)
        _check_nothing_lost(request, "rolling restart (3 nodes)", cluster, receiver, stream)
    finally:
        service.stop()


def test_an_instance_joining_and_leaving_hands_its_batches_over(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cluster_of_three: KafkaCluster,
    receiver: Receiver,
    postgres_url: str,
) -> None:
    """Partitions move twice while events flow: to a second instance as it joins, back as it
    leaves (SIGTERM). What was stored before a move is committed before it, so the
    duplicates are at most what was being stored at that moment: one batch."""
    cluster = cluster_of_three
    topic = f"events-{tmp_path.name[-12:]}".replace("_", "-")
    asyncio.run(
        create_topics(KafkaConnection(cluster.bootstrap), [topic], TopicLayout(partitions=6))
    )
    env = process_env(
        tmp_path,
        postgres_url,
        **(pipeline_env(cluster, topic) | {"WEBHOOKS_KAFKA_SESSION_TIMEOUT_MS": "6000"}),
    )
    first = ServiceProcess(env, tmp_path / "first.log").start()
    metrics_port = free_port()
    second_env = env | {
        "WEBHOOKS_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
        "WEBHOOKS_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
    }
    second = ServiceProcess(second_env, tmp_path / "second.log")
    try:
        first.subscribe(receiver.url("/failures"))
        # Events flow until both moves are done, however long a loaded machine takes.
        stream = Stream(cluster.bootstrap, topic, None, pause=0.2).start()  # 50 events/s
        receiver.wait_for("/failures", 100, timeout=60)
        second.start()  # joins: the group rebalances
        _wait(lambda: _consumed(metrics_port) > 0, 90, "the second instance never consumed")
        receiver.wait_for("/failures", len(stream.ids) + 50, timeout=60)
        assert second.terminate() == 0  # leaves: the group rebalances again
        receiver.wait_for("/failures", len(stream.ids) + 50, timeout=60)
        stream.finish()
        stream.join(120)
        _check_nothing_lost(request, "an instance joins and leaves", cluster, receiver, stream)
    finally:
        first.stop()
        second.stop()
    counts = Counter(r.json["id"] for r in receiver.at("/failures"))
    assert sum(n - 1 for n in counts.values()) <= 200  # the ingest batch size
