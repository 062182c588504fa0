"""Shared fixtures: real servers on real ports, over SQLite files and the suite's PostgreSQL."""

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from kafka.embedded import EmbeddedBroker, free_port
from kafka.provisioning import create_topics, service_topics
from service.config import Settings
from tests import apache_kafka, postgres_server
from tests.pipeline_support import Broker, Receiver, Record, new_topic, pipeline_env, produce
from tests.support import Api, ServerThread, base_env, postgres_schema
from webhooks.v1 import webhook_service_pb2 as pb

POSTGRES_REPORT = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def postgres_server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The database the PostgreSQL tests make their schemas in: WEBHOOKS_TEST_DATABASE_URL's,
    else one on the suite's own server, started at first use and stopped at the end."""
    with ExitStack() as stack:
        try:
            database = stack.enter_context(postgres_server.database_url())
        except postgres_server.MissingPostgres as error:
            missing = str(error)
        else:
            missing = ""
        if missing:  # outside the except block: one line, without the chained exception
            pytest.fail(missing, pytrace=False)
        request.config.stash[POSTGRES_REPORT] = database.origin
        yield database.url


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if report := config.stash.get(POSTGRES_REPORT, None):
        terminalreporter.write_line(report)
    for line in config.stash.get(apache_kafka.FAILURE_REPORT, []):
        terminalreporter.write_line(f"Kafka failure test, {line}")
    if missing := config.stash.get(apache_kafka.KAFKA_MISSING, None):
        terminalreporter.write_sep("!", f"APACHE KAFKA TESTS SKIPPED: {missing}", red=True)


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh schema in the suite's `test` database, dropped afterwards."""
    with postgres_schema(postgres_server_url) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'webhooks.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def make_server(tmp_path: Path, database_url: str) -> Iterator[Any]:
    """Starts a server with extra settings; stops every one started at teardown."""
    started: list[tuple[ServerThread, grpc.Channel]] = []

    def start(**overrides: str) -> Api:
        env = base_env(tmp_path, database_url) | overrides
        settings = Settings.from_env(env)
        server = ServerThread(settings)
        port = server.start()
        address = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(address)
        started.append((server, channel))
        return Api(address, settings, channel, server.app)

    yield start
    for server, channel in started:
        channel.close()
        server.stop()


@pytest.fixture
def api(make_server: Any) -> Api:
    server: Api = make_server()
    return server


@pytest.fixture(
    scope="session",
    params=["tansu", pytest.param("apache", marks=pytest.mark.apache_kafka)],
)
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """One broker of each kind for the session, tansu and a single Apache Kafka node; each
    test uses its own ingest topic."""
    if request.param == "tansu":
        tansu = EmbeddedBroker(free_port())
        tansu.start()
        asyncio.run(create_topics(tansu.bootstrap, service_topics([])))
        yield tansu
        tansu.stop()
        return
    with apache_kafka.cluster_for(request, size=1) as cluster:
        asyncio.run(create_topics(cluster.bootstrap, service_topics([])))
        yield cluster


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    instance = Receiver().start()
    yield instance
    instance.stop()


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


@pytest.fixture
def make_pipeline(make_server: Any, broker: Broker) -> Any:
    def start(**overrides: str) -> Pipeline:
        topic = new_topic(broker.bootstrap)
        env = pipeline_env(broker, topic) | overrides
        return Pipeline(make_server(**env), broker.bootstrap, topic)

    return start


@pytest.fixture
def pipeline(make_pipeline: Any) -> Pipeline:
    running: Pipeline = make_pipeline()
    return running
