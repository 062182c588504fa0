"""The tests' Apache Kafka harness when a node's port is taken before it binds it: the
node's exit names the error, and a cluster starts again on other ports."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import apache_kafka
from tests.apache_kafka import KafkaCluster, NodeExited, require_jars, started_cluster
from tests.support import port_taken_first

pytestmark = [pytest.mark.apache_kafka]


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    with port_taken_first(monkeypatch, apache_kafka) as port:
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
