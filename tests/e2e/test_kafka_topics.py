"""The service's topics come from `webhook-service kafka-init`, never from broker
auto-creation (off on the tests' Apache Kafka), and `serve` refuses to start without them."""

import asyncio
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from kafka.connection import KafkaConnection
from kafka.provisioning import missing_topics, service_topics
from tests.pipeline_support import Broker, pipeline_env
from tests.support import process_env, run_command


def _layout(bootstrap: str, topic: str) -> tuple[int, int, str]:
    """(partitions, replicas of partition 0, retention.ms) of a topic."""

    async def ask() -> tuple[int, int, str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            [described] = await admin.describe_topics([topic])
            [configs] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            retention = next(
                entry[1] for entry in configs.resources[0][4] if entry[0] == "retention.ms"
            )
            partitions = described["partitions"]
            return len(partitions), len(partitions[0]["replicas"]), str(retention)
        finally:
            await admin.close()

    return asyncio.run(ask())


def test_serve_needs_its_topics_and_kafka_init_makes_them(tmp_path: Path, broker: Broker) -> None:
    topic = f"ingest-{uuid.uuid4().hex[:10]}"  # made by nobody yet
    env = process_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'topics.db'}",
        **pipeline_env(broker, topic),
        WEBHOOKS_KAFKA_PARTITIONS="4",
        WEBHOOKS_KAFKA_RETENTION_HOURS="48",
    )
    refused = run_command("serve", env)
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()[-1:]
    assert f"Kafka topics missing: {topic};" in line and "webhook-service kafka-init" in line

    made = run_command("kafka-init", env)
    assert made.returncode == 0, made.stderr
    assert f"{topic}: created" in made.stdout
    assert "webhooks.delivery-attempts: exists" in made.stdout  # the session's broker has it
    again = run_command("kafka-init", env)  # idempotent
    assert again.returncode == 0 and f"{topic}: exists" in again.stdout
    assert (
        asyncio.run(missing_topics(KafkaConnection(broker.bootstrap), service_topics([topic])))
        == []
    )
    assert _layout(broker.bootstrap, topic) == (4, 1, str(48 * 3_600_000))
