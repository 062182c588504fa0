"""The ingest consumer: decode a batch, dead-letter the bad records, store the rest, then commit."""

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from kafka import topics
from kafka.codec import dead_letter_headers, decode_event
from kafka.connection import KafkaConnection
from kafka.failures import running_failure
from kafka.partition_turns import PartitionTurns
from kafka.producer import Producer
from service.domain.event_rules import EventRejected
from service.domain.models import Event
from service.domain.ordering import ordering_key
from service.domain.pipeline import StoredBatch
from service.errors import Unavailable
from service.logs import Outage
from service.metrics import Metrics
from service.tasks import finish, log_failure

log = logging.getLogger(__name__)


# Stores the batch's events and deliveries in one transaction.
StoreBatch = Callable[[list[Event]], Awaitable[StoredBatch]]
DeadLetter = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]
# Batches stored at once: one is written while the next is fetched and decoded.
MAX_IN_FLIGHT = 2
# At most one offset commit per this long: a commit per batch wakes the broker and us every
# few ms. Committing later only means more records read again after a crash, which the
# store turns into no second delivery.
COMMIT_INTERVAL_SECONDS = 0.2
# While records flow, fetches wait at most this long (tansu answers a fetch late, up to its
# wait, even when records are there). Once a poll finds nothing, they wait the configured
# time again, so an idle consumer does not poll the broker every few milliseconds.
FLOWING_FETCH_WAIT_MS = 3
# While the store is away the consumer stays in its group and tries the batch again this
# often at most (a rejoin after every failure took seconds each time, and longer to resume).
STORE_RETRY_MAX_SECONDS = 2.0


class IngestConsumer:
    """Offsets are committed only after the batch is in the database and every bad record
    is acknowledged on the dead-letter topic: a crash before that means re-consumption,
    which the store turns into no second delivery."""

    def __init__(
        self,
        *,
        connection: KafkaConnection,
        topic_names: Sequence[str],
        topic_pattern: str,
        group_id: str = topics.CONSUMER_GROUP,
        dead_letter_topic: str = topics.DEAD_LETTER_TOPIC,
        producer: Producer,
        store_batch: StoreBatch,
        check: Callable[[Event], None],
        default_tenant: str,
        max_event_bytes: int,
        session_timeout_ms: int = 10_000,
        fetch_max_wait_ms: int = 10,
        batch_size: int = 200,  # records per poll; larger ones stall dispatch
        metrics: Metrics | None = None,
    ) -> None:
        self._connection = connection
        self._dead_letter_topic = dead_letter_topic
        self._topics = list(topic_names)
        self._pattern = topic_pattern
        self._group_id = group_id
        self._producer = producer
        self._store_batch = store_batch
        self._check = check
        self._default_tenant = default_tenant
        self._max_bytes = max_event_bytes
        self._batch_size = batch_size
        self._session_timeout_ms = session_timeout_ms
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._turns = PartitionTurns()
        self._stopped = asyncio.Event()
        self._metrics = metrics or Metrics()
        # Batches being stored and handed off, oldest first, with the offsets that follow them.
        self._in_flight: deque[tuple[asyncio.Future[None], dict[TopicPartition, int]]] = deque()
        # Offsets whose batches (and every batch before them) are stored, not yet committed.
        self._to_commit: dict[TopicPartition, int] = {}
        self._commit_wanted = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._outage = Outage(log, "ingest interrupted; retrying")

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="ingest")
        self._task.add_done_callback(log_failure)

    async def run(self) -> None:
        delay = 0.5
        store_delay = 0.25
        while not self._stopped.is_set():
            try:
                await self.connect()
                delay = 0.5
                while not self._stopped.is_set():
                    await self.poll_once()
                    store_delay = 0.25
            except Exception as exc:
                if isinstance(exc, Unavailable):
                    self._outage.failed(exc.message)
                    if await self._rewind():
                        await asyncio.sleep(store_delay)
                        store_delay = min(store_delay * 2, STORE_RETRY_MAX_SECONDS)
                        continue
                elif isinstance(exc, KafkaError):
                    self._outage.failed(running_failure(self._connection, exc, "READ"))
                else:
                    # A bug, not an outage: keep consuming (uncommitted records come again)
                    # rather than leave a live service that ingests nothing.
                    log.exception("ingest failed unexpectedly; reconnecting")
                await self.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        await self.close()

    async def _rewind(self) -> bool:
        """After a batch was not stored: commits what was, and moves every partition back to
        its committed offset, so the records not stored are read again while the consumer
        keeps its place in the group. False when the broker cannot take part now."""
        consumer = self._consumer
        if consumer is None:
            return False
        try:
            await self._commit_pending()
            if self._to_commit:  # the commit failed: they stay to commit
                return False
            partitions = consumer.assignment()
            if not partitions:
                return True
            committed = await consumer.seek_to_committed(*partitions)
            # Nothing committed yet: from the start, as auto_offset_reset says.
            fresh = [partition for partition, offset in committed.items() if not offset]
            if fresh:
                await consumer.seek_to_beginning(*fresh)
        except KafkaError:
            return False
        return True

    async def connect(self) -> None:
        """Joins the group (run() does; tests poll by hand after it)."""
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            **self._connection.options(),
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(1024 * 1024, self._max_bytes + 1024),
            fetch_max_bytes=16 * 1024 * 1024,
            # A joining member waits up to half of this for the group to settle.
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(300, self._session_timeout_ms // 4),
            # The idle wait; `_pace` shortens it while records flow.
            fetch_max_wait_ms=self._fetch_max_wait_ms,
        )
        handover = _Handover(self)
        if self._pattern:
            consumer.subscribe(pattern=self._pattern, listener=handover)
        else:
            consumer.subscribe(self._topics, listener=handover)
        try:
            await consumer.start()
        except KafkaError:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def poll_once(self) -> int:
        """One batch: returns how many records it handled. Its events are stored while the
        next batch is fetched and decoded (at most MAX_IN_FLIGHT batches at once), and its
        offsets are committed in the background once it and every batch before it are
        stored: a commit never holds up the next batch."""
        assert self._consumer is not None
        batches = await self._turns.poll(
            self._consumer, 20 if self._in_flight else 200, self._batch_size
        )
        self._pace(flowing=bool(batches))
        if not batches:
            await self._settle(keep=0)
            return 0
        events: list[Event] = []
        sources: list[ConsumerRecord] = []
        dead: list[DeadLetter] = []
        offsets: dict[TopicPartition, int] = {}
        for partition, records in batches.items():
            for record in records:
                try:
                    events.append(self._decode(record))
                except EventRejected as rejected:
                    dead.append(self._dead_letter(record, rejected))
                else:
                    sources.append(record)
            offsets[partition] = records[-1].offset + 1
        if dead:
            await self._producer.send_all(dead)
        self._in_flight.append((asyncio.ensure_future(self._store(events, sources)), offsets))
        await self._settle(keep=MAX_IN_FLIGHT - 1)
        for partition in offsets:
            end = self._consumer.highwater(partition)
            if end is not None:
                self._metrics.consumer_lag.labels(partition.topic, str(partition.partition)).set(
                    max(0, end - offsets[partition])
                )
        return sum(len(records) for records in batches.values())

    def _pace(self, flowing: bool) -> None:
        """The wait of the next fetches: FLOWING_FETCH_WAIT_MS while records flow, the
        configured one once a poll found none. aiokafka reads its fetcher's attribute for
        every fetch request it builds (aiokafka 0.14; tests/test_ingest_consumer.py checks it)."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            idle = self._fetch_max_wait_ms
            fetcher._fetch_max_wait_ms = min(FLOWING_FETCH_WAIT_MS, idle) if flowing else idle

    async def _store(self, events: list[Event], sources: list[ConsumerRecord]) -> None:
        stored = await self._store_batch(events)
        self._metrics.events_consumed.labels("accepted", "").inc(len(events) - len(stored.refused))
        if stored.refused:
            # Before the batch counts as stored, so before its offsets are committed.
            await self._producer.send_all(
                [self._dead_letter(sources[index], why) for index, why in stored.refused]
            )
        # Stored: waiting for the hand-off is the backpressure when the dispatcher is full.
        await stored.hand_off()

    async def _settle(self, keep: int) -> None:
        """Hands the offsets of stored batches at the head to the committer, waiting for the
        oldest while more than `keep` are in flight. A failed batch raises, and the offsets
        of every batch after it are dropped: their records are read again."""
        while self._in_flight:
            stored, offsets = self._in_flight[0]
            if not stored.done():
                if len(self._in_flight) <= keep:
                    break
                await asyncio.wait({stored})
            self._in_flight.popleft()
            error = stored.exception()
            if error is not None:
                await self._abandon()
                raise error
            self._to_commit.update(offsets)
            self._commit_wanted.set()
            self._outage.ended()
        if self._committer is None and self._to_commit:
            self._committer = asyncio.create_task(self._commit_loop(), name="ingest-commits")

    async def _abandon(self) -> None:
        """After a failed batch: lets the later ones finish storing (their deliveries are
        dispatched) but forgets their offsets, so their records are read again."""
        pending = [stored for stored, _ in self._in_flight]
        self._in_flight.clear()
        if pending:
            await asyncio.wait(pending)
        for stored in pending:
            error = stored.exception()
            if error is not None:
                log.debug("batch not stored", extra={"error": type(error).__name__})

    async def _commit_loop(self) -> None:
        """One commit at a time, of the newest offsets. A failed commit (a rebalance, the
        broker away) is retried with the next one for the partitions still ours; the new
        owner of a partition that moved re-reads those records, finds their deliveries
        stored and leased to us, and leaves them to us."""
        while True:
            await self._commit_wanted.wait()
            await self._commit_pending()
            await asyncio.sleep(COMMIT_INTERVAL_SECONDS)

    async def _commit_pending(self) -> None:
        self._commit_wanted.clear()
        offsets, self._to_commit = self._to_commit, {}
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
        except asyncio.CancelledError:  # closing: the last commit takes them
            for partition, offset in offsets.items():
                self._to_commit.setdefault(partition, offset)
            raise
        except KafkaError as exc:
            log.warning("offsets not committed yet", extra={"error": type(exc).__name__})
            ours = self._consumer.assignment() if self._consumer is not None else set()
            for partition, offset in offsets.items():
                if partition in ours:
                    self._to_commit.setdefault(partition, offset)

    def _dead_letter(self, record: ConsumerRecord, rejected: EventRejected) -> DeadLetter:
        self._metrics.events_consumed.labels("dead_lettered", rejected.reason).inc()
        log.info(
            "event dead-lettered",
            extra={
                "reason": rejected.reason,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
            },
        )
        return (
            self._dead_letter_topic,
            record.key,
            record.value if record.value is not None else b"",
            dead_letter_headers(
                _headers(record),
                rejected.reason,
                rejected.message,
                record.topic,
                record.partition,
                record.offset,
            ),
        )

    def _decode(self, record: ConsumerRecord) -> Event:
        """The record's checked event, or EventRejected; a decoder bug is refused too, as
        DECODE_FAILED, because it must not block the partition."""
        try:
            event = decode_event(
                record.value,
                _headers(record),
                default_tenant=self._default_tenant,
                max_bytes=self._max_bytes,
            )
            self._check(event)
        except EventRejected:
            raise
        except Exception as exc:
            log.exception("event could not be decoded", extra={"offset": record.offset})
            raise EventRejected("DECODE_FAILED", f"unexpected {type(exc).__name__}") from exc
        changes: dict[str, Any] = {}
        if not event.ordering_key and record.key:
            changes["ordering_key"] = ordering_key(record.key)  # no partitionkey: the record's
        if record.timestamp and record.timestamp > 0:
            # Read again after a crash, the record gives its deliveries the same ids.
            changes["record_time_ms"] = record.timestamp
        return dataclasses.replace(event, **changes) if changes else event

    async def hand_over(self) -> None:
        """Before partitions go to another member (one joins or leaves): the batches in flight
        are stored and their offsets committed, so the new owner starts after them and sends
        nothing of them again. A batch that failed is left to the new owner to read again."""
        with contextlib.suppress(Exception):
            await self._settle(keep=0)
        await self._commit_pending()

    async def stop(self, grace: float) -> None:
        """Stops polling; the batches in flight are stored and committed within `grace`."""
        self._stopped.set()
        if self._task is not None:
            await finish(self._task, grace)

    async def close(self) -> None:
        """Finishes the batches in flight and commits what they stored, then leaves."""
        # A failed batch has abandoned the ones after it already; its records are read again.
        with contextlib.suppress(Exception):
            await self._settle(keep=0)
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        if self._consumer is not None:
            await self._commit_pending()
            self._to_commit.clear()
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(KafkaError):
                await consumer.stop()


class _Handover(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka awaits these around a rebalance, with fetching paused."""

    def __init__(self, consumer: IngestConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._consumer.hand_over()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


def _headers(record: ConsumerRecord) -> list[tuple[str, bytes]]:
    return [(k, v if v is not None else b"") for k, v in (record.headers or ())]
