"""The ingest consumer against the real broker: how long its fetches wait, flowing and idle."""

import asyncio

from kafka.connection import KafkaConnection
from kafka.ingest import FLOWING_FETCH_WAIT_MS, IngestConsumer
from kafka.producer import Producer
from service.domain.models import Event
from service.domain.pipeline import StoredBatch
from tests.pipeline_support import Broker, cloud_event, new_topic, produce, structured

IDLE_WAIT_MS = 40


def _fetch_wait(consumer: IngestConsumer) -> int:
    # The attribute aiokafka's fetcher builds every fetch request from (aiokafka 0.14).
    wait: int = consumer._consumer._fetcher._fetch_max_wait_ms  # type: ignore[union-attr]
    return wait


def test_fetches_wait_briefly_while_records_flow_and_the_configured_time_when_idle(
    broker: Broker,
) -> None:
    topic = new_topic(broker.bootstrap)
    stored: list[Event] = []

    async def store_batch(events: list[Event]) -> StoredBatch:
        stored.extend(events)

        async def hand_off() -> None:
            return None

        return StoredBatch(hand_off)

    async def run() -> list[tuple[int, int]]:
        producer = Producer(
            KafkaConnection(broker.bootstrap), idempotence=broker.supports_idempotence
        )
        consumer = IngestConsumer(
            connection=KafkaConnection(broker.bootstrap),
            topic_names=[topic],
            topic_pattern="",
            producer=producer,
            store_batch=store_batch,
            check=lambda event: None,
            default_tenant="t",
            max_event_bytes=65536,
            session_timeout_ms=6000,
            fetch_max_wait_ms=IDLE_WAIT_MS,
        )
        seen: list[tuple[int, int]] = []  # (records polled, fetch wait after the poll)
        try:
            await consumer.connect()
            for _ in range(3):
                seen.append((await consumer.poll_once(), _fetch_wait(consumer)))
            event = cloud_event("person.created", {}, event_id="e1")
            await asyncio.to_thread(produce, broker.bootstrap, topic, [structured(event)])
            for _ in range(50):  # a poll waits up to 200 ms for records
                seen.append((await consumer.poll_once(), _fetch_wait(consumer)))
                if stored:
                    break
            seen.append((await consumer.poll_once(), _fetch_wait(consumer)))
        finally:
            await consumer.close()
        return seen

    seen = asyncio.run(run())
    assert [e.id for e in stored] == ["e1"]
    idle_before = [wait for count, wait in seen if count == 0][:3]
    assert idle_before == [IDLE_WAIT_MS] * 3, seen
    flowing = [wait for count, wait in seen if count > 0]
    assert flowing == [FLOWING_FETCH_WAIT_MS], seen
    assert seen[-1] == (0, IDLE_WAIT_MS), seen  # nothing more: idle again
