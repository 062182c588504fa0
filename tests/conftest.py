"""Shared fixtures: real servers on real ports, over SQLite files and the suite's PostgreSQL."""

import asyncio
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest

from kafka.connection import KafkaConnection
from kafka.embedded import EmbeddedBroker, free_port
from kafka.provisioning import create_topics, service_topics
from service.config import Settings
from tests import apache_kafka, postgres_server
from tests.pipeline_support import Broker, Pipeline, Receiver, new_topic, pipeline_env
from tests.support import Api, ServerThread, base_env, postgres_schema

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


def _report(config: pytest.Config) -> dict[str, Any]:
    return {
        "postgres": config.stash.get(POSTGRES_REPORT, None),
        "failures": config.stash.get(apache_kafka.FAILURE_REPORT, []),
        "missing": config.stash.get(apache_kafka.KAFKA_MISSING, None),
    }


# Tests whose xdist_group pytest-xdist could not keep together (see below).
SPLIT_FROM_GROUP = pytest.StashKey[set[str]]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup` each xdist_group must reach one worker. pytest-xdist says so
    by suffixing node ids, which pytest 9.2 ignores (pytest-xdist#1386): such tests fail."""
    if getattr(config.option, "loadgroup", False):
        config.stash[SPLIT_FROM_GROUP] = {
            i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
        }


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid in item.config.stash.get(SPLIT_FROM_GROUP, set()):
        pytest.fail(
            "pytest-xdist did not keep this test with its xdist_group: pin pytest to a version"
            " it supports (pyproject.toml)",
            pytrace=False,
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands what the summary prints to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["report"] = json.dumps(_report(session.config))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """The controller gathers its workers' reports (pytest-xdist)."""
    report = json.loads(getattr(node, "workeroutput", {}).get("report", "{}"))
    stash = node.config.stash
    if report.get("postgres"):
        stash[POSTGRES_REPORT] = report["postgres"]
    if report.get("failures"):
        stash[apache_kafka.FAILURE_REPORT] = [
            *stash.get(apache_kafka.FAILURE_REPORT, []),
            *report["failures"],
        ]
    if report.get("missing"):
        stash[apache_kafka.KAFKA_MISSING] = report["missing"]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    report = _report(config)
    if report["postgres"]:
        terminalreporter.write_line(report["postgres"])
    for line in report["failures"]:
        terminalreporter.write_line(f"Failure test, {line}")
    if report["missing"]:
        terminalreporter.write_sep(
            "!", f"APACHE KAFKA TESTS SKIPPED: {report['missing']}", red=True
        )


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
        asyncio.run(create_topics(KafkaConnection(tansu.bootstrap), service_topics([])))
        yield tansu
        tansu.stop()
        return
    with apache_kafka.cluster_for(request, size=1) as cluster:
        asyncio.run(create_topics(KafkaConnection(cluster.bootstrap), service_topics([])))
        yield cluster


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    instance = Receiver().start()
    yield instance
    instance.stop()


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
