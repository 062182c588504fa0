"""The service's topics: created by `webhook-service kafka-init`, never by broker
auto-creation (`serve` checks they exist: kafka/preflight.py)."""

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from kafka import topics
from kafka.connection import KafkaConnection

VISIBLE_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class TopicLayout:
    """How `kafka-init` makes a topic. replication_factor 0 = 3, or every broker if fewer;
    retention_hours -1 = forever."""

    partitions: int = 3
    replication_factor: int = 0
    retention_hours: int = -1


class TopicsUnavailable(Exception):
    """The broker cannot be asked about topics, or cannot create them; one line."""


def service_topics(
    ingest: Sequence[str],
    audit: str = topics.DELIVERY_ATTEMPTS_TOPIC,
    dead_letter: str = topics.DEAD_LETTER_TOPIC,
) -> list[str]:
    """Every topic the service reads or writes: the ingest ones, audit and dead letters."""
    return [*ingest, audit, dead_letter]


async def missing_topics(connection: KafkaConnection, names: Sequence[str]) -> list[str]:
    """Those of `names` the cluster does not have."""
    async with _admin(connection) as admin:
        existing = set(await admin.list_topics())
    return [name for name in names if name not in existing]


async def create_topics(
    connection: KafkaConnection, names: Sequence[str], layout: TopicLayout = TopicLayout()
) -> list[str]:
    """Creates those of `names` that do not exist (idempotent); returns the ones it made."""
    async with _admin(connection) as admin:
        existing = set(await admin.list_topics())
        wanted = [name for name in names if name not in existing]
        if not wanted:
            return []
        brokers = len((await admin.describe_cluster())["brokers"])
        replicas = layout.replication_factor or min(3, brokers)
        hours = layout.retention_hours
        configs = {"retention.ms": str(hours * 3_600_000 if hours >= 0 else -1)}
        new = [
            NewTopic(name, layout.partitions, replicas, topic_configs=configs) for name in wanted
        ]
        with contextlib.suppress(TopicAlreadyExistsError):  # another kafka-init just now
            response = await admin.create_topics(new)
            failed = [
                f"{name}: {message or code}"
                for name, code, message in response.topic_errors
                if code not in (0, TopicAlreadyExistsError.errno)
            ]
            if failed:
                raise TopicsUnavailable(f"could not create {'; '.join(failed)}")
        # Created is not yet visible: a cluster spreads the new metadata to every broker
        # shortly after answering, and a `serve` started at once would miss the topics.
        deadline = asyncio.get_running_loop().time() + VISIBLE_WAIT_SECONDS
        while not set(wanted) <= set(await admin.list_topics()):
            if asyncio.get_running_loop().time() > deadline:
                raise TopicsUnavailable(f"{', '.join(wanted)} not listed after creation")
            await asyncio.sleep(0.1)
    return wanted


@contextlib.asynccontextmanager
async def _admin(connection: KafkaConnection):  # type: ignore[no-untyped-def]
    admin = AIOKafkaAdminClient(**connection.options(), request_timeout_ms=10_000)
    try:
        await admin.start()
        yield admin
    except KafkaError as exc:
        raise TopicsUnavailable(f"Kafka at {connection.describe()}: {type(exc).__name__}") from None
    finally:
        await admin.close()
