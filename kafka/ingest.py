"""The ingest consumer: decode a batch, dead-letter the bad records, store the rest, then commit."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from kafka import topics
from kafka.codec import dead_letter_headers, decode_event
from kafka.producer import Producer
from service.domain.event_rules import EventRejected
from service.domain.models import Event
from service.errors import Unavailable
from service.metrics import Metrics

log = logging.getLogger(__name__)

# Stores the batch's events and deliveries in one transaction.
StoreBatch = Callable[[list[Event]], Awaitable[Callable[[], Awaitable[None]]]]


class IngestConsumer:
    """Offsets are committed only after the batch is in the database and every bad record
    is acknowledged on the dead-letter topic: a crash before that means re-consumption,
    which the store turns into no second delivery."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic_names: Sequence[str],
        topic_pattern: str,
        producer: Producer,
        store_batch: StoreBatch,
        check: Callable[[Event], None],
        default_tenant: str,
        max_event_bytes: int,
        session_timeout_ms: int = 10_000,
        fetch_max_wait_ms: int = 10,
        batch_size: int = 200,  # records per poll; larger ones stall dispatch (make bench)
        metrics: Metrics | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = list(topic_names)
        self._pattern = topic_pattern
        self._producer = producer
        self._store_batch = store_batch
        self._check = check
        self._default_tenant = default_tenant
        self._max_bytes = max_event_bytes
        self._batch_size = batch_size
        self._session_timeout_ms = session_timeout_ms
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._stopped = asyncio.Event()
        self._metrics = metrics or Metrics()

    async def run(self) -> None:
        delay = 0.5
        while not self._stopped.is_set():
            try:
                await self._connect()
                delay = 0.5
                while not self._stopped.is_set():
                    await self.poll_once()
            except Exception as exc:
                if isinstance(exc, KafkaError | Unavailable):
                    log.warning(
                        "ingest interrupted; reconnecting", extra={"error": type(exc).__name__}
                    )
                else:
                    # A bug, not an outage: keep consuming (uncommitted records come again)
                    # rather than leave a live service that ingests nothing.
                    log.exception("ingest failed unexpectedly; reconnecting")
                await self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        await self._close()

    async def _connect(self) -> None:
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            *([] if self._pattern else self._topics),
            bootstrap_servers=self._bootstrap,
            group_id=topics.CONSUMER_GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(1024 * 1024, self._max_bytes + 1024),
            fetch_max_bytes=16 * 1024 * 1024,
            # A joining member waits up to half of this for the group to settle.
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(300, self._session_timeout_ms // 4),
            # tansu holds every fetch this long even when records arrive sooner, so it
            # bounds produce-to-delivery latency (real Kafka answers as soon as data is there).
            fetch_max_wait_ms=self._fetch_max_wait_ms,
        )
        if self._pattern:
            consumer.subscribe(pattern=self._pattern)
        try:
            await consumer.start()
        except KafkaError:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def poll_once(self) -> int:
        """One batch: returns how many records it handled."""
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=200, max_records=self._batch_size)
        if not batches:
            return 0
        events: list[Event] = []
        dead: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
        offsets: dict[TopicPartition, int] = {}
        for partition, records in batches.items():
            for record in records:
                self._take(record, events, dead)
            offsets[partition] = records[-1].offset + 1
        self._metrics.events_consumed.labels("accepted", "").inc(len(events))
        if dead:
            await self._producer.send_all(dead)
        hand_off = await self._store_batch(events)
        # The deliveries are stored: sending starts while the commit travels. The next
        # poll waits for the hand-off (backpressure when the dispatcher is full). If a
        # rebalance fails the commit, the new owner re-reads these records, finds their
        # deliveries stored and leased to us, and leaves them to us.
        handing = asyncio.ensure_future(hand_off())
        try:
            await self._consumer.commit(offsets)
        finally:
            await handing
        for partition in offsets:
            end = self._consumer.highwater(partition)
            if end is not None:
                self._metrics.consumer_lag.labels(partition.topic, str(partition.partition)).set(
                    max(0, end - offsets[partition])
                )
        return sum(len(records) for records in batches.values())

    def _take(self, record: ConsumerRecord, events: list[Event], dead: list) -> None:  # type: ignore[type-arg]
        headers = [(k, v if v is not None else b"") for k, v in (record.headers or ())]
        try:
            event = self._decode(record, headers)
        except EventRejected as rejected:
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
            value = record.value if record.value is not None else b""
            dead.append(
                (
                    topics.DEAD_LETTER_TOPIC,
                    record.key,
                    value,
                    dead_letter_headers(
                        headers,
                        rejected.reason,
                        rejected.message,
                        record.topic,
                        record.partition,
                        record.offset,
                    ),
                )
            )
            return
        events.append(event)

    def _decode(self, record: ConsumerRecord, headers: list[tuple[str, bytes]]) -> Event:
        """The record's checked event, or EventRejected; a decoder bug is refused too, as
        DECODE_FAILED, because it must not block the partition."""
        try:
            event = decode_event(
                record.value,
                headers,
                default_tenant=self._default_tenant,
                max_bytes=self._max_bytes,
            )
            self._check(event)
        except EventRejected:
            raise
        except Exception as exc:
            log.exception("event could not be decoded", extra={"offset": record.offset})
            raise EventRejected("DECODE_FAILED", f"unexpected {type(exc).__name__}") from exc
        return event

    async def stop(self) -> None:
        self._stopped.set()

    async def _close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(KafkaError):
                await consumer.stop()
