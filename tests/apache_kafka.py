"""Apache Kafka for the tests and the benchmark: the release pinned in kafka_broker/pom.xml,
fetched with Maven into a cache, run on Java 17 in KRaft mode as one combined node or a
cluster of three, on loopback ports with log dirs on disk, started and stopped by process id.

`python -m tests.apache_kafka fetch` fills the cache (make test-deps runs it)."""

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from kafka.embedded import free_port

POM = Path(__file__).parent / "kafka_broker" / "pom.xml"
VERSION = "4.4.0"  # as in the POM
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "webhook-service"
HEAP = "512m"


class MissingKafka(Exception):
    """Java or Maven is not there, or the jars cannot be fetched; the message is one line."""


def jars(cache: Path = CACHE) -> Path:
    """The directory of the broker's jars, fetched with Maven the first time (again after
    the POM changed: the directory is named after its digest)."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    libs = cache / f"kafka-{VERSION}-{digest}"
    if (libs / f"kafka_2.13-{VERSION}.jar").is_file():
        return libs
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise MissingKafka(
            f"Apache Kafka tests need {' and '.join(missing)} on PATH"
            " (apt-get install openjdk-17-jdk-headless maven)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"kafka-{VERSION}-", dir=cache))
    command = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise MissingKafka(f"mvn could not fetch Apache Kafka {VERSION}: {last[0][:300]}")
    partial.rename(libs)  # whole or not at all: a run stopped halfway leaves no libs
    return libs


def _cluster_id() -> str:
    """Kafka's form (a UUID in URL-safe base64), passed as `--cluster-id=...`: one in 32
    starts with "-", which the tool's parser took for an option."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaNode:
    """One combined broker and controller; its data stays in `log_dir` across restarts."""

    def __init__(
        self,
        node_id: int,
        root: Path,
        libs: Path,
        quick_jit: bool = True,
        listeners: Mapping[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        # The tests' nodes compile with C1 only: a third less CPU to start and idle, on a
        # machine the whole parallel suite shares. The benchmark's node runs as shipped.
        self._jit = ["-XX:TieredStopAtLevel=1"] if quick_jit else []
        self.port = free_port()
        self.controller_port = free_port()
        # Client listeners beside PLAINTEXT (name -> security protocol), each on its own port.
        self.listeners = dict(listeners or {})
        self.ports = {name: free_port() for name in self.listeners}
        self.dir = root / f"node-{node_id}"
        self.log_dir = self.dir / "data"
        self.properties = self.dir / "server.properties"
        self._libs = libs
        self.process: subprocess.Popen[bytes] | None = None

    def configure(self, voters: str, settings: Mapping[str, object]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        extra = [f"{name}://127.0.0.1:{port}" for name, port in self.ports.items()]
        advertised = ",".join([f"PLAINTEXT://127.0.0.1:{self.port}", *extra])
        protocols = ",".join(f"{name}:{protocol}" for name, protocol in self.listeners.items())
        lines = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"{advertised},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                ["PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT", *([protocols] if protocols else [])]
            ),
            "log.dirs": self.log_dir,
            **settings,
        }
        # A multi-line value (an inline PEM) is written as one line with "\\n" escapes.
        escaped = {k: str(v).replace("\n", "\\n") for k, v in lines.items()}
        self.properties.write_text("".join(f"{k}={v}\n" for k, v in escaped.items()))

    def format(self, cluster_id: str, *extra: str) -> None:
        self._java(
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            f"--config={self.properties}",
            *extra,
        )

    def _java(self, main: str, *args: object) -> None:
        command = ["java", "-cp", f"{self._libs}/*", main, *map(str, args)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{main} failed: {(done.stdout + done.stderr)[-500:]}")

    def start(self) -> None:
        """Starts the process; `KafkaCluster.wait_ready` says when it serves."""
        with open(self.dir / "out.log", "ab") as out:
            self.process = subprocess.Popen(
                [
                    "java",
                    f"-Xms{HEAP}",
                    f"-Xmx{HEAP}",
                    "-XX:+UseSerialGC",  # two cores: no parallel collector threads
                    *self._jit,
                    "-cp",
                    f"{self._libs}/*",
                    "kafka.Kafka",
                    str(self.properties),
                ],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def last_error(self) -> str:
        """The last ERROR line of out.log (log4j2's default configuration prints only
        those) and the causes of its exception; else the log's end."""
        lines = (self.dir / "out.log").read_text(errors="replace").splitlines()
        errors = [n for n, line in enumerate(lines) if " ERROR " in line]
        if not errors:
            return "\n".join(lines[-5:])
        causes = [line for line in lines[errors[-1] + 1 :] if line.startswith("Caused by:")]
        return "\n".join([lines[errors[-1]], *causes])

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the broker dies with its data on disk."""
        self._signal(signal.SIGKILL)

    def stop(self, wait_seconds: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown), SIGKILL if it takes longer than `wait_seconds`."""
        if not self.running:
            return
        assert self.process is not None
        self._signal(signal.SIGCONT, wait=False)
        self._signal(signal.SIGTERM, wait=False)
        try:
            self.process.wait(wait_seconds)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM, wait=False)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP, wait=False)

    def resume(self) -> None:
        self._signal(signal.SIGCONT, wait=False)

    def _signal(self, number: int, wait: bool = True) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, number)
            if wait:
                self.process.wait(30)


class NodeExited(RuntimeError):
    """A node's process ended while its cluster started."""


class KafkaCluster:
    """`size` combined nodes forming one KRaft quorum. One node: replication 1. Three:
    replication factor 3 and min.insync.replicas 2, for topics made by the tests and the
    broker's own. Topics are never created automatically."""

    def __init__(
        self,
        root: Path,
        size: int = 1,
        libs: Path | None = None,
        *,
        quick_jit: bool = True,
        listeners: Mapping[str, str] | None = None,
        extra_settings: Mapping[str, object] | None = None,
        format_args: tuple[str, ...] = (),
    ) -> None:
        """`listeners`, `extra_settings` and `format_args` (e.g. SCRAM users) are those of a
        secured cluster (tests/secured_kafka.py)."""
        libs = libs or jars()
        self.nodes = [KafkaNode(n, root, libs, quick_jit, listeners) for n in range(1, size + 1)]
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = min(size, 3)
        settings = {
            "auto.create.topics.enable": "false",
            "num.partitions": 3,
            "default.replication.factor": replicas,
            "min.insync.replicas": min(size, 2),
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": 5,  # the default 50 slows the first group join
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min(size, 2),
            "group.initial.rebalance.delay.ms": 0,
            # The tests' consumers use 2 s sessions so a crash rebalances quickly.
            "group.min.session.timeout.ms": 1000,
            "unclean.leader.election.enable": "false",
            **(extra_settings or {}),
        }
        cluster_id = _cluster_id()
        for node in self.nodes:
            node.configure(voters, settings)
            node.format(cluster_id, *format_args)
        self.bootstrap = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        self.supports_idempotence = True

    def start(self, wait_seconds: float = 90.0) -> None:
        for node in self.nodes:
            node.start()
        self.wait_ready(wait_seconds)

    def wait_ready(self, wait_seconds: float = 90.0) -> None:
        """Until every running node is registered with the controller and answers."""
        deadline = time.monotonic() + wait_seconds
        expected = {n.node_id for n in self.nodes if n.running}
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise NodeExited(f"Kafka node {node.node_id} exited: {node.last_error()}")
            if all(n.listening() for n in self.nodes if n.running) and expected <= self._brokers():
                return
            time.sleep(0.3)
        raise RuntimeError(f"Kafka nodes {sorted(expected)} not ready within {wait_seconds} s")

    def _brokers(self) -> set[int]:
        bootstrap = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes if n.running)

        async def ask() -> set[int]:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                described = await admin.describe_cluster()
                return {int(b["node_id"]) for b in described["brokers"]}
            except (KafkaError, OSError):
                return set()
            finally:
                await admin.close()

        return asyncio.run(ask())

    def wait_in_sync(self, wait_seconds: float = 60.0) -> None:
        """Until no partition is under-replicated, as a rolling restart waits between nodes."""

        async def lagging() -> int:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                described = await admin.describe_topics()
                return sum(
                    len(p["isr"]) < len(p["replicas"])
                    for topic in described
                    for p in topic["partitions"]
                )
            finally:
                await admin.close()

        deadline = time.monotonic() + wait_seconds
        while asyncio.run(lagging()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"partitions still under-replicated after {wait_seconds} s")
            time.sleep(0.3)

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def leader(self, topic: str, partition: int = 0) -> KafkaNode:
        """The node that leads the partition now."""

        async def ask() -> int:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                [described] = await admin.describe_topics([topic])
                found = {p["partition"]: p["leader"] for p in described["partitions"]}
                return int(found[partition])
            finally:
                await admin.close()

        return self.node(asyncio.run(ask()))

    # The EmbeddedBroker's outage interface, for tests that run on either broker.
    def pause(self) -> None:
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            node.resume()

    def stop(self, wait_seconds: float = 15.0) -> None:
        """SIGTERM to every node at once (one by one, the last waits for a quorum that has
        gone), SIGKILL to those still there after `wait_seconds`."""
        for node in self.nodes:
            node.resume()
            node.terminate()
        deadline = time.monotonic() + wait_seconds
        for node in self.nodes:
            node.stop(max(0.1, deadline - time.monotonic()))


def started_cluster(root: Path, make: Callable[[], KafkaCluster]) -> KafkaCluster:
    """A cluster from `make` (its nodes under `root`), started. When a node exits at start,
    a second from `make` is tried, on other ports: a port free_port found can be taken (say,
    by a client's outgoing connection) in the seconds before the JVM binds it."""
    try:
        return _started(make())
    except NodeExited as exited:
        print(f"{exited}\nstarting again on other ports", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
    return _started(make())


def _started(cluster: KafkaCluster) -> KafkaCluster:
    """The cluster, started; or stopped again if it could not start."""
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextmanager
def running_cluster(size: int = 1) -> Iterator[KafkaCluster]:
    """A started cluster in a temporary directory, stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="webhooks-kafka-"))
    try:
        cluster = started_cluster(root, lambda: KafkaCluster(root, size))
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# Kept here, not in conftest.py, which pytest may import apart from the tests' own import.
KAFKA_MISSING = pytest.StashKey[str]()
# One line per failure test (test_kafka_failures.py, test_database_outages.py): delivered,
# lost, duplicates.
FAILURE_REPORT = pytest.StashKey[list[str]]()


def require_jars(request: pytest.FixtureRequest) -> Path:
    """The broker's jars, or one line saying what is missing: a failure under CI, a skip
    elsewhere, reported again at the end of the run."""
    try:
        return jars()
    except MissingKafka as error:
        missing = str(error)
    request.config.stash[KAFKA_MISSING] = missing
    if os.environ.get("CI"):
        pytest.fail(missing, pytrace=False)
    pytest.skip(missing)


@contextmanager
def cluster_for(request: pytest.FixtureRequest, size: int) -> Iterator[KafkaCluster]:
    """A running Apache Kafka cluster (see require_jars when it cannot run)."""
    require_jars(request)
    with running_cluster(size) as cluster:
        yield cluster


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        sys.exit("usage: python -m tests.apache_kafka fetch")
    try:
        print(f"Apache Kafka {VERSION}: {jars()}")
    except MissingKafka as error:
        sys.exit(str(error))
