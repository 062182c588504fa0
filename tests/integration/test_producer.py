"""The producer on the real broker: batched sends land where send_all says they did."""

import asyncio
import os
from typing import Any

from kafka.connection import KafkaConnection
from kafka.producer import Producer
from tests.pipeline_support import Broker, new_topic, read_topic


def test_send_all_reports_each_records_partition_and_offset(broker: Broker) -> None:
    first, second = new_topic(broker.bootstrap), new_topic(broker.bootstrap)
    # Many keys and none, two topics, and records larger than a whole batch (256 KB),
    # which go alone and split the batches around them.
    records: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = [
        (first if n % 3 else second, f"key-{n % 7}".encode() if n % 5 else None, b"v%d" % n, [])
        for n in range(600)
    ]
    records[100] = (first, b"key-1", os.urandom(300_000), [("h", b"1")])
    records[101] = (first, b"key-1", b"after the big one", [])

    async def send() -> list[tuple[int, int]]:
        producer = Producer(
            KafkaConnection(broker.bootstrap), idempotence=broker.supports_idempotence
        )
        await producer.start()
        try:
            return await producer.send_all(records)
        finally:
            await producer.stop()

    placed = asyncio.run(send())
    assert len(placed) == len(records)
    for topic in (first, second):
        mine = [n for n, record in enumerate(records) if record[0] == topic]
        count = len(mine)

        def complete(got: list[Any], n: int = count) -> bool:
            return len(got) >= n

        stored = read_topic(broker.bootstrap, topic, complete)
        at = {(r.partition, r.offset): r for r in stored}
        assert len(at) == len(mine)
        for n in mine:
            record = at[placed[n]]
            assert (record.key, record.value) == records[n][1:3]
            assert [(k, v) for k, v in record.headers] == records[n][3]
            assert record.timestamp > 0
    # A key always lands on one partition.
    by_key: dict[bytes, set[int]] = {}
    for (topic, key, _, _), (partition, _) in zip(records, placed, strict=True):
        if key is not None and topic == first:
            by_key.setdefault(key, set()).add(partition)
    assert all(len(partitions) == 1 for partitions in by_key.values())
