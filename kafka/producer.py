"""One aiokafka producer for the audit outbox, the dead-letter topic and PublishEvent."""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    TopicAuthorizationFailedError,
    UnknownProducerId,
)
from aiokafka.partitioner import DefaultPartitioner

from kafka.connection import KafkaConnection
from kafka.failures import running_failure
from service.errors import Unavailable
from service.logs import Outage

log = logging.getLogger(__name__)
Headers = Sequence[tuple[str, bytes]]
# An idempotent producer's sequence numbers out of step with the broker's (a batch the broker
# refused, for a missing ACL say, still used its numbers): every later send to the partition
# fails. aiokafka does not reset them as the Java client does; the producer is made anew.
_STALE_SEQUENCES = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch)
# How long a send made while the producer connects in the background waits for it.
FIRST_SEND_WAIT_SECONDS = 5.0


class KeyedPartitioner:
    """Kafka's default key hashing, remembered per key: aiokafka hashes in pure Python, and
    audit records reuse a few keys (their subscription ids) thousands of times a second."""

    def __init__(self) -> None:
        self._hash = DefaultPartitioner()
        self._known: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._hash(key, all_partitions, available))
        remembered = (key, len(all_partitions))
        known = self._known.get(remembered)
        if known is None:
            if len(self._known) >= 100_000:
                self._known.clear()
            known = self._known[remembered] = self._hash(key, all_partitions, available)
        return known


class Producer:
    """Acks from all in-sync replicas, idempotent unless told not to (tansu lacks
    InitProducerId): a retried send after a leader change writes no second copy."""

    def __init__(self, connection: KafkaConnection, idempotence: bool = True) -> None:
        self._connection = connection
        self._idempotence = idempotence
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = KeyedPartitioner()
        self._connecting: asyncio.Task[None] | None = None

    async def start(self, *, wait: bool = True) -> None:
        """Connects, retrying with backoff until the broker answers; with `wait=False` in the
        background (sends fail with Unavailable until then)."""
        if wait:
            await self._connect()
        else:
            self._connecting = asyncio.create_task(self._connect(), name="kafka-connect")

    async def _connect(self) -> None:
        delay = 0.5
        outage = Outage(log, "Kafka producer cannot connect; retrying")
        while True:
            producer = AIOKafkaProducer(
                **self._connection.options(),
                acks="all",
                enable_idempotence=self._idempotence,
                linger_ms=5,
                max_batch_size=256 * 1024,
                request_timeout_ms=15_000,
            )
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                outage.failed(running_failure(self._connection, exc, "WRITE"))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._producer = producer
            outage.ended()
            log.info("connected to Kafka", extra={"kafka": self._connection.describe()})
            return

    @property
    def ready(self) -> bool:
        return self._producer is not None

    async def reachable(self) -> bool:
        """Whether a broker answers a metadata request now (callers bound the wait)."""
        producer = self._producer
        if producer is None:
            return False
        try:
            return bool(await producer.client.force_metadata_update())
        except KafkaError:
            return False

    async def send_all(
        self, records: Sequence[tuple[str, bytes | None, bytes, Headers]], *, again: bool = True
    ) -> list[tuple[int, int]]:
        """Sends (topic, key, value, headers) records and waits until the broker acked each;
        returns their (partition, offset). Raises Unavailable if any was not acked.

        The records go out as one batch per partition (more when one fills): aiokafka's
        per-record send() costs several times a batch append in Python."""
        producer = self._producer
        connecting = self._connecting
        if producer is None and connecting is not None and not connecting.done():
            # Just started (or made anew): a send waits a moment for the connection.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(connecting), FIRST_SEND_WAIT_SECONDS)
            producer = self._producer
        if producer is None:
            raise Unavailable("Kafka is not connected yet")
        try:
            return await self._send_batches(producer, records)
        except KafkaError as exc:
            if isinstance(exc, _STALE_SEQUENCES) and self._idempotence:
                self._renew(producer)
                if again:  # at once, on the new producer
                    return await self.send_all(records, again=False)
            if isinstance(exc, TopicAuthorizationFailedError):
                raise Unavailable(running_failure(self._connection, exc, "WRITE")) from None
            raise Unavailable(f"Kafka did not acknowledge: {type(exc).__name__}") from None

    def _renew(self, stale: AIOKafkaProducer) -> None:
        """Replaces the producer in the background (sends fail with Unavailable until then)."""
        if id(self._producer) != id(stale):
            return  # another send renewed it already
        self._producer = None
        log.info("Kafka producer made anew: its sequence numbers went out of step")

        async def replace() -> None:
            await stale.stop()
            await self._connect()

        self._connecting = asyncio.create_task(replace(), name="kafka-connect")

    async def _send_batches(
        self,
        producer: AIOKafkaProducer,
        records: Sequence[tuple[str, bytes | None, bytes, Headers]],
    ) -> list[tuple[int, int]]:
        partitions: dict[str, list[int]] = {}
        batches: list[Any] = []  # every batch builder, in the order they were started
        filling: dict[tuple[str, int], int] = {}  # the batch each partition is filling
        sent: dict[int, asyncio.Future[Any]] = {}
        placed: list[tuple[int, int]] = []  # per record: its batch and its place there
        for topic, key, value, headers in records:
            if topic not in partitions:
                partitions[topic] = sorted(await producer.partitions_for(topic))
            every = partitions[topic]
            where = (topic, self._partitioner(key, every, every))
            number = filling.get(where)
            if number is None or not _append(batches[number], key, value, headers):
                if number is not None:  # full: send it and start the next one
                    sent[number] = await producer.send_batch(
                        batches[number], topic, partition=where[1]
                    )
                number = filling[where] = len(batches)
                batches.append(producer.create_batch())
                if not _append(batches[number], key, value, headers):
                    raise Unavailable(f"a record of {len(value)} bytes is too large for Kafka")
            placed.append((number, batches[number].record_count() - 1))
        for where, number in filling.items():
            sent[number] = await producer.send_batch(batches[number], where[0], partition=where[1])
        acked = dict(zip(sent, await asyncio.gather(*sent.values()), strict=True))
        return [(acked[batch].partition, acked[batch].offset + place) for batch, place in placed]

    async def stop(self, grace: float = 0.0) -> None:
        """Stops connecting, sends what is buffered and disconnects."""
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
            self._connecting = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def _append(builder: Any, key: bytes | None, value: bytes, headers: Headers) -> bool:
    """Adds the record to the batch; False when the batch is full."""
    return builder.append(timestamp=None, key=key, value=value, headers=headers) is not None
