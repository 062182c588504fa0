"""Partitions take turns at the consumer's polls."""

from typing import Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition


class Polled(Protocol):
    """What of AIOKafkaConsumer the turns use."""

    def assignment(self) -> set[TopicPartition]: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]: ...


class PartitionTurns:
    """aiokafka hands out one partition's fetched records (up to max_partition_fetch_bytes)
    before the next one's, so a burst in one partition held up the events of the others for
    seconds. Here each poll goes first to the partitions not served yet in this round, and a
    round ends when none of them has records ready: every partition with records is served
    once before any is served again. Each partition's records stay in order."""

    def __init__(self) -> None:
        self._served: set[TopicPartition] = set()

    async def poll(
        self, consumer: Polled, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        waiting = consumer.assignment() - self._served
        if waiting and self._served:
            batches = await consumer.getmany(*waiting, timeout_ms=0, max_records=max_records)
            if batches:
                self._served.update(batches)
                return batches
        batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        self._served = set(batches)  # a new round
        return batches
