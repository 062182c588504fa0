"""The ingest consumer against the real broker: how long its fetches wait, flowing and idle;
partitions taking turns."""

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from kafka.connection import KafkaConnection
from kafka.ingest import FLOWING_FETCH_WAIT_MS, IngestConsumer
from kafka.partition_turns import PartitionTurns
from kafka.producer import Producer
from service.domain.models import Event
from service.domain.pipeline import StoredBatch
from tests.bench.e2e import produce_all
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


@pytest.mark.parametrize("turns", [True, False])
def test_partitions_take_turns_so_a_burst_in_one_holds_up_no_other(
    broker: Broker, turns: bool
) -> None:
    """A burst in partition 0 is being read when 3 records arrive in partition 1: they are
    read next. Without PartitionTurns aiokafka hands out the rest of the burst's fetched
    records first (this checks that the reason for them still holds)."""
    topic = new_topic(broker.bootstrap)
    asyncio.run(produce_all(broker.bootstrap, topic, [b"x" * 200] * 2000, to_partition=0))

    async def run() -> list[dict[int, list[int]]]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=f"turns-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        polls: list[dict[int, list[int]]] = []  # per poll with records: partition -> offsets
        try:
            partition_turns = PartitionTurns()
            deadline = time.monotonic() + 30
            while sum(len(o) for p in polls for o in p.values()) < 2003:
                assert time.monotonic() < deadline, polls
                if turns:
                    batches = await partition_turns.poll(consumer, 200, 50)
                else:
                    batches = await consumer.getmany(timeout_ms=200, max_records=50)
                if batches:
                    polls.append(
                        {tp.partition: [r.offset for r in rs] for tp, rs in batches.items()}
                    )
                if len(polls) == 1:  # the burst is fetched: now the quiet records
                    await produce_all(broker.bootstrap, topic, [b"q"] * 3, to_partition=1)
                    await asyncio.sleep(1.0)  # for the fetcher to fetch them
        finally:
            await consumer.stop()
        return polls

    polls = asyncio.run(run())
    first_quiet = next(n for n, poll in enumerate(polls) if 1 in poll)
    if turns:
        assert first_quiet == 1, polls[: first_quiet + 1]
    else:
        assert first_quiet >= 10, polls[: first_quiet + 1]
    for partition, count in ((0, 2000), (1, 3)):  # each partition's records in order, once
        offsets = [o for poll in polls for o in poll.get(partition, [])]
        assert offsets == list(range(count))
