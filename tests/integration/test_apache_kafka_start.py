"""The tests' Apache Kafka harness when a node's port is taken before it binds it: the
node's exit names the error, and a cluster starts again on other ports."""

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kafka.embedded import free_port
from tests import apache_kafka
from tests.apache_kafka import KafkaCluster, NodeExited, require_jars, started_cluster

pytestmark = [pytest.mark.apache_kafka]


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A port something else listens on, handed out as the next cluster's first port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        first = [port]
        monkeypatch.setattr(
            apache_kafka, "free_port", lambda: first.pop() if first else free_port()
        )
        yield port


def test_a_node_whose_port_is_taken_says_why_it_exited(
    request: pytest.FixtureRequest, tmp_path: Path, taken: int
) -> None:
    cluster = KafkaCluster(tmp_path, 1, require_jars(request))
    try:
        assert cluster.nodes[0].port == taken
        with pytest.raises(NodeExited, match="Address already in use"):
            cluster.start(60)
    finally:
        cluster.stop()


def test_a_cluster_starts_again_on_other_ports(
    request: pytest.FixtureRequest, tmp_path: Path, taken: int
) -> None:
    require_jars(request)
    cluster = started_cluster(tmp_path, lambda: KafkaCluster(tmp_path))
    try:
        node = cluster.nodes[0]
        assert node.port != taken and node.running
        assert cluster.bootstrap == f"127.0.0.1:{node.port}"
        cluster.wait_ready(30)  # registered with its controller and answering
    finally:
        cluster.stop()
