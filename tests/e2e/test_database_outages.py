"""The database going away under a running service (`serve` as a process, on a PostgreSQL
server of this module's own, events flowing from Kafka to a real receiver): a restart, cut
connections and a slow database. Each counts deliveries at the receiver, rows in the store
and records on the audit topic, fails if anything is lost, and reports the duplicates and
the peak RSS at the end of the run."""

import asyncio
import datetime
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kafka.connection import KafkaConnection
from kafka.embedded import EmbeddedBroker, free_port
from kafka.provisioning import create_topics, service_topics
from tests import postgres_server
from tests.apache_kafka import FAILURE_REPORT
from tests.pipeline_support import (
    Receiver,
    audit_records,
    new_topic,
    pipeline_env,
    read_topic,
    stream_events,
    topic_partitions,
    webhook_ids_by_event,
)
from tests.support import Api, ServiceProcess, process_env
from webhooks.v1 import webhook_service_pb2 as pb

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("db-outages")]

SUCCEEDED = 2  # service.domain.outcomes.DeliveryStatus


@pytest.fixture(scope="module")
def server() -> Iterator[postgres_server.PostgresServer]:
    """A server these tests stop and start; the rest of the suite never sees it."""
    try:
        context = postgres_server.own_server()
        started = context.__enter__()
    except postgres_server.MissingPostgres as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield started
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def tansu() -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(free_port())
    broker.start()
    asyncio.run(create_topics(KafkaConnection(broker.bootstrap), service_topics([])))
    yield broker
    broker.stop()


def _database(server: postgres_server.PostgresServer) -> str:
    name = f"outage_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@dataclass
class Watch:
    """Samples the service while the database is away: its health, a gRPC call's answer,
    and the RSS of the service and its delivery worker."""

    service: ServiceProcess
    first_rss_kb: int = 0
    peak_rss_kb: int = 0
    health: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Watch":
        self.first_rss_kb = _rss_kb(self.service)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        address = f"127.0.0.1:{self.service.port}"
        with grpc.insecure_channel(address) as channel:
            api = Api(address, None, channel)  # type: ignore[arg-type]
            health = health_pb2_grpc.HealthStub(channel)
            while not self._stop.is_set():
                self.peak_rss_kb = max(self.peak_rss_kb, _rss_kb(self.service))
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    self.health.append(int(reply.status))
                except grpc.RpcError:
                    pass
                try:
                    api.call("ListSubscriptions", pb.ListSubscriptionsRequest())
                except grpc.RpcError as error:
                    self.errors[f"{error.code().name}: {error.details()}"] += 1
                time.sleep(0.2)


def _rss_kb(service: ServiceProcess) -> int:
    """VmRSS of the service and its children (the delivery worker)."""
    assert service.process is not None
    pids = [service.process.pid]
    children = Path(f"/proc/{service.process.pid}/task/{service.process.pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _start(
    tmp_path: Path,
    server: postgres_server.PostgresServer,
    tansu: EmbeddedBroker,
    receiver: Receiver,
) -> tuple[ServiceProcess, str, str]:
    database = _database(server)
    topic = new_topic(tansu.bootstrap)
    # The default lease (60 s) outlasts the outage: the retry scheduler claims no delivery
    # whose attempt was made but is not recorded yet.
    settings = pipeline_env(tansu, topic) | {"WEBHOOKS_DELIVERY_LEASE_SECONDS": "60"}
    env = process_env(tmp_path, database, **settings)
    service = ServiceProcess(env, tmp_path / "service.log").start()
    service.subscribe(receiver.url("/db"))
    return service, database, topic


def _check_nothing_lost(
    request: pytest.FixtureRequest,
    name: str,
    receiver: Receiver,
    tansu: EmbeddedBroker,
    database: str,
    ids: list[str],
    peak_rss_kb: int,
) -> None:
    """Every event delivered, every delivery SUCCEEDED in the store, every request the
    receiver got recorded as an attempt and audited; duplicates and RSS reported."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if set(ids) <= set(webhook_ids_by_event(receiver, "/db", delivered_only=True)):
            break
        time.sleep(0.2)
    delivered = webhook_ids_by_event(receiver, "/db", delivered_only=True)
    lost = sorted(set(ids) - set(delivered))
    requests = receiver.at("/db")
    duplicates = len(requests) - len(ids)
    delivery_ids = {i for webhook_ids in delivered.values() for i in webhook_ids}
    with psycopg.connect(database) as db:
        deadline = time.monotonic() + 30
        while True:  # the last results are written just after the receiver answered
            [(succeeded,)] = db.execute(
                "SELECT count(*) FROM deliveries WHERE status = %s", [SUCCEEDED]
            ).fetchall()
            [(attempts,)] = db.execute("SELECT count(*) FROM attempts").fetchall()
            if (succeeded >= len(delivery_ids) and attempts >= len(requests)) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.2)
    audited = audit_records(tansu.bootstrap, delivery_ids, attempts, timeout=60)
    request.config.stash.setdefault(FAILURE_REPORT, []).append(
        f"database outage, {name}: {len(ids)} events, {len(ids) - len(lost)} delivered,"
        f" {len(lost)} lost, {duplicates} duplicate requests; {attempts} attempts stored,"
        f" {len({r.attempt_id for r in audited})} audited; peak RSS {peak_rss_kb // 1024} MB"
    )
    assert not lost, f"{len(lost)} events never delivered, e.g. {lost[:5]}"
    assert succeeded == len(delivery_ids), f"{succeeded} of {len(delivery_ids)} SUCCEEDED"
    assert attempts == len(requests), f"{attempts} attempts stored for {len(requests)} requests"
    assert len({r.attempt_id for r in audited}) == attempts


def _committed_event_ids(bootstrap: str, topic: str) -> set[str]:
    """The events before the group's committed offsets: those it says it has stored."""

    async def offsets() -> dict[int, int]:
        # A member that never joins: it only asks the coordinator (tansu cannot answer the
        # admin client's OffsetFetch version).
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=f"webhooks-{topic}", enable_auto_commit=False
        )
        await consumer.start()
        try:
            found = {
                p: await consumer.committed(TopicPartition(topic, p))
                for p in await topic_partitions(bootstrap, topic)
            }
            return {p: offset for p, offset in found.items() if offset}
        finally:
            await consumer.stop()

    committed = asyncio.run(offsets())

    def reached(records: list[Any]) -> bool:
        last = {r.partition: r.offset for r in records}
        return all(last.get(p, -1) >= offset - 1 for p, offset in committed.items())

    return {
        record.key.decode()
        for record in read_topic(bootstrap, topic, reached, timeout=20)
        if record.offset < committed.get(record.partition, 0)
    }


def _log_lines(service: ServiceProcess, text: str) -> int:
    return sum(text in line for line in service.log_path.read_text().splitlines())


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)
    return time.monotonic()


def test_a_database_restart_mid_stream_loses_nothing(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    server: postgres_server.PostgresServer,
    tansu: EmbeddedBroker,
    receiver: Receiver,
) -> None:
    service, database, topic = _start(tmp_path, server, tansu, receiver)
    # 20 events a second for 35 s: the outage begins after 5 s and lasts 15.
    ids = [f"evt-{n:05d}" for n in range(700)]
    try:
        stream = stream_events(tansu.bootstrap, topic, ids, pause=0.5)
        receiver.wait_for("/db", 50)
        watch = Watch(service).start()
        server.stop("immediate")
        time.sleep(15)
        committed = _committed_event_ids(tansu.bootstrap, topic)
        back_utc = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        server.start()
        back = time.monotonic()
        before = len(receiver.at("/db"))
        flowing = _wait(lambda: len(receiver.at("/db")) > before, 30, "no delivery after return")
        assert flowing - back <= 10, f"deliveries resumed {flowing - back:.1f} s after"
        time.sleep(2)
        watch.stop()
        stream.join(120)
        _check_nothing_lost(request, "restart", receiver, tansu, database, ids, watch.peak_rss_kb)
        assert service.process is not None and service.process.poll() is None
        # No offset was committed for an event not stored: each one committed at the end of
        # the outage had been stored before it.
        with psycopg.connect(database) as db:
            received: dict[str, datetime.datetime] = dict(
                db.execute(
                    "SELECT event_id, received_at FROM events WHERE event_id = ANY(%s)",
                    [list(committed)],
                ).fetchall()
            )
        assert committed and set(received) == committed
        assert all(at < back_utc for at in received.values())
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert not_serving in watch.health, "health never said NOT_SERVING"
        assert watch.errors and all(e.startswith("UNAVAILABLE") for e in watch.errors), watch.errors
        # Memory stays bounded: ingest waits, attempt results wait within the in-flight bound.
        grown = (watch.peak_rss_kb - watch.first_rss_kb) // 1024
        assert grown < 100, f"RSS grew {grown} MB while the database was away"
        # Said once when it went and once when it came back, not per statement.
        assert _log_lines(service, '"message": "database unreachable') == 2
    finally:
        service.stop()


def _terminate_connections(database: str) -> int:
    """pg_terminate_backend on every connection to the database but this one."""
    name = database.rsplit("/", 1)[1]
    with psycopg.connect(database, autocommit=True) as db:
        rows = db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        ).fetchall()
    return len(rows)


def test_cut_connections_lose_nothing_and_callers_only_see_unavailable(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    server: postgres_server.PostgresServer,
    tansu: EmbeddedBroker,
    receiver: Receiver,
) -> None:
    service, database, topic = _start(tmp_path, server, tansu, receiver)
    ids = [f"evt-{n:05d}" for n in range(400)]
    try:
        stream = stream_events(tansu.bootstrap, topic, ids, pause=0.5)
        receiver.wait_for("/db", 30)
        watch = Watch(service).start()
        cut = []
        for _ in range(5):
            cut.append(_terminate_connections(database))
            time.sleep(2)
        watch.stop()
        stream.join(120)
        assert all(cut), f"connections cut each time: {cut}"
        _check_nothing_lost(
            request,
            f"{sum(cut)} connections cut",
            receiver,
            tansu,
            database,
            ids,
            watch.peak_rss_kb,
        )
        assert all(e.startswith("UNAVAILABLE") for e in watch.errors), watch.errors
    finally:
        service.stop()


def test_a_table_locked_for_5_s_slows_the_service_and_loses_nothing(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    server: postgres_server.PostgresServer,
    tansu: EmbeddedBroker,
    receiver: Receiver,
) -> None:
    """Every statement on deliveries waits behind the lock: ingest, attempt results and
    calls queue (backpressure) and all go through once it is released."""
    service, database, topic = _start(tmp_path, server, tansu, receiver)
    ids = [f"evt-{n:05d}" for n in range(400)]
    try:
        stream = stream_events(tansu.bootstrap, topic, ids, pause=0.5)
        receiver.wait_for("/db", 30)
        watch = Watch(service).start()
        with psycopg.connect(database) as db:
            db.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
            time.sleep(5)
            during = len(receiver.at("/db"))
        released = time.monotonic()
        _wait(lambda: len(receiver.at("/db")) > during, 30, "no delivery after the lock")
        print(f"first delivery {time.monotonic() - released:.1f} s after the lock")
        watch.stop()
        stream.join(120)
        _check_nothing_lost(
            request, "deliveries locked 5 s", receiver, tansu, database, ids, watch.peak_rss_kb
        )
        assert all(e.startswith("UNAVAILABLE") for e in watch.errors), watch.errors
    finally:
        service.stop()
