"""PartitionTurns with a fake consumer that hands out records as aiokafka does: the first
partition's (in fetch order) before the next one's."""

import asyncio
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from kafka.partition_turns import PartitionTurns


class FetchOrder:
    def __init__(self, pending: dict[int, int]) -> None:
        self.pending = {TopicPartition("t", p): n for p, n in pending.items()}  # in fetch order

    def assignment(self) -> set[TopicPartition]:
        return set(self.pending)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        room = max_records or 1_000_000
        out: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        for tp, left in self.pending.items():
            if (partitions and tp not in partitions) or not left or not room:
                continue
            take = min(left, room)
            self.pending[tp] -= take
            room -= take
            out[tp] = [None] * take  # only counted
        return out


def _served(pending: dict[int, int], polls: int) -> list[list[int]]:
    consumer = FetchOrder(pending)
    turns = PartitionTurns()

    async def run() -> list[list[int]]:
        return [
            sorted(tp.partition for tp in await turns.poll(consumer, 0, 10)) for _ in range(polls)
        ]

    return asyncio.run(run())


def test_every_partition_with_records_is_served_once_before_any_again() -> None:
    assert _served({0: 100, 1: 100, 2: 100}, 6) == [[0], [1], [2], [0], [1], [2]]


def test_a_partition_with_few_records_is_served_in_the_next_poll() -> None:
    # aiokafka alone: [0] x 10 first.
    assert _served({0: 100, 1: 3}, 4) == [[0], [1], [0], [0]]


def test_a_lone_busy_partition_is_served_every_poll() -> None:
    assert _served({0: 30, 1: 0}, 4) == [[0], [0], [0], []]
