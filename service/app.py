"""The composition root: wires settings, store, use cases, the delivery engine, Kafka and the
gRPC server, runs them in one process, and shuts them down in order."""

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import Any

from grpc_health.v1 import health_pb2

from kafka import topics
from kafka.codec import encode_attempt, event_to_proto
from kafka.ingest import IngestConsumer, StoredBatch
from kafka.outbox import AUDIT_HEADERS, OutboxPublisher
from kafka.producer import Producer
from kafka.provisioning import TopicsUnavailable, missing_topics, service_topics
from service import runtime
from service.api.server import GrpcServer
from service.api.servicer import WebhookServicer
from service.catalog import CatalogError, CatalogService, EventTypeCheck
from service.config import Settings
from service.crypto import SecretBox
from service.deliveries import DeliveryService
from service.delivery.ahead import AheadPlanner
from service.delivery.attempts import AttemptMaker, AttemptSettings
from service.delivery.dispatcher import DeliveryPolicy, Dispatcher
from service.delivery.scheduler import RetryScheduler
from service.delivery.worker import DeliveryWorker
from service.domain.access import KeyEntry, parse_keys
from service.domain.clock import utcnow
from service.domain.event_rules import EVENT_ID_REUSED
from service.domain.models import Event
from service.errors import Unavailable, invalid
from service.metrics import Metrics, MetricsServer
from service.store.checkpoint import Checkpointer
from service.store.database import open_database, sqlite_path
from service.store.deliveries import DeliveryStore, RecordedAttempt
from service.store.event_types import EventTypeStore
from service.store.migrations import migrate
from service.store.retention import prune_batch
from service.store.runner import StoreRunner
from service.store.subscriptions import IDEMPOTENCY_WINDOW, SubscriptionStore
from service.subscriptions import SubscriptionService

log = logging.getLogger(__name__)
CATALOG_REFRESH_SECONDS = 5.0
PRUNE_BATCH = 1000


# The health service name that says whether Kafka answers; "" (the whole service) stays
# SERVING meanwhile, since the API and deliveries already queued go on without it.
KAFKA_HEALTH = "webhooks.kafka"
KAFKA_PROBE_SECONDS = 2.0


class StartupError(Exception):
    """The service cannot start; the message says what to fix."""


async def check_topics(settings: Settings) -> None:
    """The service never relies on broker auto-creation: its topics must be there."""
    names = service_topics([] if settings.kafka_topic_pattern else settings.kafka_topics)
    try:
        missing = await missing_topics(settings.kafka_bootstrap_servers, names)
    except TopicsUnavailable as exc:
        raise StartupError(f"cannot list the Kafka topics: {exc}") from None
    if missing:
        raise StartupError(
            f"Kafka topics missing: {', '.join(missing)}; create them with"
            " `webhook-service kafka-init`"
        )


def load_keys(settings: Settings) -> dict[str, KeyEntry]:
    path = settings.api_keys_file
    try:
        return parse_keys(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise StartupError(f"WEBHOOKS_API_KEYS_FILE {path}: {exc}") from None


def delivery_policy(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        endpoint_concurrency=settings.endpoint_concurrency,
        default_rate_limit=settings.default_rate_limit,
        circuit_failures=settings.circuit_failures,
        circuit_cooldown=settings.circuit_cooldown_seconds,
        max_in_flight=settings.max_in_flight,
        attempt_timeout=settings.attempt_timeout_seconds,
        lease=timedelta(seconds=settings.delivery_lease_seconds),
    )


class App:
    """One service instance. `start()` returns the bound gRPC port; `stop()` drains."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._keys: Mapping[str, KeyEntry] = {}
        self._runner: StoreRunner | None = None
        self._checkpointer: Checkpointer | None = None
        self._grpc: GrpcServer | None = None
        self._dispatcher: Dispatcher | None = None
        # Signs and sends in a child process (WEBHOOKS_DELIVERY_WORKERS=1); started with
        # Kafka, else at the first attempt.
        self.delivery_worker: DeliveryWorker | None = None
        self._scheduler: RetryScheduler | None = None
        self._producer: Producer | None = None
        self._consumer: IngestConsumer | None = None
        self._outbox: OutboxPublisher | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self.check = EventTypeCheck({})
        self.metrics = Metrics()
        self._metrics_server: MetricsServer | None = None
        self.metrics_port: int | None = None

    async def start(self) -> int:
        settings = self.settings
        self._keys = load_keys(settings)
        if settings.kafka_enabled:
            await check_topics(settings)
        db = open_database(settings.database_url)
        # SQLite takes one writer at a time and makes the others sleep-poll for the lock
        # (measured: a third fewer deliveries/s with 4 threads), so it gets one thread.
        sqlite = settings.database_url.startswith("sqlite")
        threads = 1 if sqlite else settings.store_threads
        self._runner = runner = StoreRunner(db, threads, inline_reads=sqlite)
        self.database = db
        try:
            applied = await runner.call(migrate, db)
        except Unavailable:
            raise StartupError(
                f"cannot reach the database at {_safe_url(settings.database_url)}"
            ) from None
        if applied:
            log.info("schema migrated", extra={"versions": applied})
        path = sqlite_path(settings.database_url)
        if path is not None:
            self._checkpointer = Checkpointer(path)
            self._checkpointer.start()
        box = SecretBox(settings.secret_encryption_keys)
        event_types = EventTypeStore(db)
        catalog = CatalogService(event_types)
        if settings.event_types_file is not None:
            try:
                count = await runner.call(catalog.load_file, settings.event_types_file)
            except CatalogError as exc:
                raise StartupError(f"WEBHOOKS_EVENT_TYPES_FILE {exc}") from None
            log.info("event type catalog loaded", extra={"count": count})
        self._event_types = event_types
        await self.refresh_catalog()

        policy = delivery_policy(settings)
        store = DeliveryStore(db, box)
        self._store = store
        attempts = AttemptSettings(
            allow_http=settings.allow_http,
            allow_cidrs=settings.ssrf_allow_cidrs,
            timeout_seconds=settings.attempt_timeout_seconds,
            ca_file=settings.delivery_ca_file,
            schedule=settings.retry_schedule,
            jitter=settings.retry_jitter,
            disable_after=timedelta(seconds=settings.disable_after_seconds),
            audit_topic=topics.DELIVERY_ATTEMPTS_TOPIC,
            encode_audit=encode_attempt,
        )
        if settings.delivery_workers:
            self.delivery_worker = DeliveryWorker(attempts)
        self._dispatcher = dispatcher = Dispatcher(
            runner=runner,
            store=store,
            attempts=self.delivery_worker or AttemptMaker(attempts),
            policy=policy,
            after_write=self._outbox_written,
            publish_audit=self._publish_audit if settings.kafka_enabled else None,
            metrics=self.metrics,
        )
        dispatcher.start()
        self._planner = AheadPlanner(
            runner, store, lambda: self.check.required_scopes, policy.lease
        )
        self._scheduler = RetryScheduler(
            runner=runner,
            store=store,
            dispatcher=dispatcher,
            policy=policy,
            interval=settings.scheduler_interval_seconds,
        )
        self._spawn("scheduler", self._scheduler.run())
        self._spawn("catalog-refresh", self._every(CATALOG_REFRESH_SECONDS, self.refresh_catalog))
        self._spawn("metrics-sample", self._every(settings.metrics_interval_seconds, self._sample))
        if settings.retention_seconds:
            self._spawn("retention", self._every(settings.retention_interval_seconds, self.prune))
        if settings.kafka_enabled:
            if self.delivery_worker is not None:
                await self.delivery_worker.start()
            self._start_kafka(runner, store, policy)

        subscription_store = SubscriptionStore(db, box)
        deliveries = DeliveryService(
            runner=runner,
            store=store,
            event_types=event_types,
            subscriptions=subscription_store,
            dispatcher=dispatcher,
            policy=policy,
            publish=self._publish if settings.kafka_enabled else None,
        )
        servicer = WebhookServicer(
            runner,
            SubscriptionService(subscription_store, event_types, settings),
            catalog,
            deliveries,
            lambda: self._keys,
            on_subscription_change=self._subscription_changed,
            on_catalog_change=self._catalog_changed,
            metrics=self.metrics,
        )
        self._grpc = GrpcServer(settings, servicer)
        port = await self._grpc.start()
        if settings.kafka_enabled:
            await self._probe_kafka()
            self._spawn("kafka-health", self._every(KAFKA_PROBE_SECONDS, self._probe_kafka))
        log.info("serving gRPC", extra={"address": settings.grpc_address, "port": port})
        if settings.metrics_address:
            try:
                self._metrics_server = self.metrics.serve(settings.metrics_address)
            except OSError as exc:
                raise StartupError(
                    f"WEBHOOKS_METRICS_ADDRESS {settings.metrics_address}: {exc.strerror}"
                ) from None
            self.metrics_port = self._metrics_server.port
            log.info("serving metrics", extra={"port": self.metrics_port})
        return port

    def _start_kafka(
        self, runner: StoreRunner, store: DeliveryStore, policy: DeliveryPolicy
    ) -> None:
        settings = self.settings
        self._producer = producer = Producer(
            settings.kafka_bootstrap_servers, idempotence=settings.kafka_idempotence
        )

        async def store_batch(events: list[Event]) -> StoredBatch:
            assert self._dispatcher is not None
            dispatcher = self._dispatcher
            planner = self._planner
            if earlier := planner.earlier(events):
                await asyncio.wait(earlier)  # then this batch finds those copies stored
            ahead = await planner.plan(events)
            # First in the store's queue: an event waits for nothing already accepted.
            stored = asyncio.ensure_future(
                runner.call_first(
                    store.ingest, events, self.check.required_scopes, policy.lease, ahead
                )
            )
            if ahead:
                planner.storing(ahead, stored)
                stored.add_done_callback(lambda _: planner.ended(ahead))
                await dispatcher.submit(ahead, stored)
            # Shielded: the transaction runs on whatever happens here, and the dispatcher
            # must learn how it ended.
            ingested = await asyncio.shield(stored)
            created = len(ahead) - len(ingested.not_stored) + len(ingested.jobs)
            self.metrics.deliveries_created.inc(created)
            return StoredBatch(
                lambda: dispatcher.submit(ingested.jobs),
                [(index, EVENT_ID_REUSED) for index in ingested.reused_ids],
            )

        self._consumer = IngestConsumer(
            bootstrap=settings.kafka_bootstrap_servers,
            topic_names=settings.kafka_topics,
            topic_pattern=settings.kafka_topic_pattern,
            group_id=settings.kafka_group_id,
            producer=producer,
            store_batch=store_batch,
            check=lambda event: self.check(event),
            default_tenant=settings.default_tenant,
            max_event_bytes=settings.max_event_bytes,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            metrics=self.metrics,
        )

        async def fetch(limit: int) -> Any:
            return await runner.call(store.outbox_batch, limit)

        async def delete(ids: list[int]) -> None:
            await runner.call(store.outbox_delete, ids)

        async def release(ids: list[int]) -> None:
            await runner.call(store.outbox_release, ids)

        self._outbox = OutboxPublisher(
            producer=producer, fetch=fetch, delete=delete, release=release
        )
        consumer, outbox = self._consumer, self._outbox

        async def run_kafka() -> None:
            await producer.start()
            log.info("connected to Kafka", extra={"bootstrap": settings.kafka_bootstrap_servers})
            self._spawn("ingest", consumer.run())
            self._spawn("outbox", outbox.run())

        self._spawn("kafka-connect", run_kafka())

    def _subscription_changed(self, subscription_id: str) -> None:
        assert self._dispatcher is not None
        self._dispatcher.invalidate(subscription_id)
        self._planner.invalidate()

    async def _publish(self, event: Event) -> tuple[str, int, int]:
        if self._producer is None:
            raise Unavailable("Kafka is disabled on this instance")
        topic = self.settings.kafka_topics[0]
        value = event_to_proto(event).SerializeToString()
        limit = self.settings.max_event_bytes
        if len(value) > limit:  # ingest would dead-letter it: refuse it now instead
            raise invalid("event.data", f"the event is {len(value)} bytes; the limit is {limit}")
        [(partition, offset)] = await self._producer.send_all(
            [(topic, event.id.encode(), value, [("content-type", b"application/x-protobuf")])]
        )
        return topic, partition, offset

    async def _publish_audit(self, items: Sequence[RecordedAttempt]) -> None:
        if self._producer is None:
            raise Unavailable("Kafka is not connected yet")
        await self._producer.send_all(
            [(i.audit_topic, i.audit_key, i.audit_value, AUDIT_HEADERS) for i in items]
        )

    def _outbox_written(self) -> None:
        if self._outbox is not None:
            self._outbox.notify()

    async def refresh_catalog(self) -> None:
        self.check = EventTypeCheck(await self._call(self._event_types.catalog))

    def _catalog_changed(self) -> None:
        self._spawn("catalog-refresh-now", self.refresh_catalog())

    async def _probe_kafka(self) -> None:
        """Health `webhooks.kafka` and the webhooks_kafka_up gauge say whether Kafka answers."""
        assert self._grpc is not None
        up = False
        if self._producer is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KAFKA_PROBE_SECONDS):
                    up = await self._producer.reachable()
        self.metrics.kafka_up.set(1 if up else 0)
        serving = health_pb2.HealthCheckResponse.SERVING
        await self._grpc.health.set(
            KAFKA_HEALTH, serving if up else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def _sample(self) -> None:
        assert self._runner is not None
        self.metrics.pending_deliveries.set(await self._runner.call(self._store.pending_count))
        self.metrics.outbox_backlog.set(await self._runner.call(self._store.outbox_size))

    async def prune(self) -> dict[str, int]:
        """Deletes history older than the retention, one bounded transaction at a time."""
        assert self._runner is not None
        now = utcnow()
        before = now - timedelta(seconds=self.settings.retention_seconds)
        totals: dict[str, int] = {}
        while not self._stopping.is_set():
            counts = await self._runner.call(
                prune_batch, self.database, before, now - IDEMPOTENCY_WINDOW, PRUNE_BATCH
            )
            for table, count in counts.items():
                totals[table] = totals.get(table, 0) + count
                self.metrics.pruned_rows.labels(table).inc(count)
            if counts["deliveries"] < PRUNE_BATCH and counts["events"] < PRUNE_BATCH:
                break
        if any(totals.values()):
            log.info("retention pruned old history", extra=totals)
        return totals

    async def _every(self, seconds: float, work: Callable[[], Awaitable[Any]]) -> None:
        """Runs `work` every `seconds` until stop; a database outage only skips a round."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)
            if self._stopping.is_set():
                return
            with contextlib.suppress(Unavailable):
                await work()

    async def _call(self, fn: Callable[[], Any]) -> Any:
        assert self._runner is not None
        return await self._runner.call(fn)

    def _spawn(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks[name] = task

        def done(finished: asyncio.Task[None]) -> None:
            if not finished.cancelled() and finished.exception() is not None:
                log.error(
                    "background task failed", extra={"task": name}, exc_info=finished.exception()
                )

        task.add_done_callback(done)

    def reload_keys(self) -> None:
        """Re-reads the keys file (SIGHUP); keeps the old keys if the new file is invalid."""
        try:
            self._keys = load_keys(self.settings)
            log.info("API keys reloaded", extra={"count": len(self._keys)})
        except StartupError as exc:
            log.error("API keys not reloaded: %s", exc)

    async def stop(self) -> None:
        """Stops taking work, finishes in-flight attempts, commits offsets, publishes what the
        outbox holds, then closes gRPC and the database."""
        grace = self.settings.shutdown_grace_seconds
        self._stopping.set()
        if self._grpc is not None:
            await self._grpc.health.enter_graceful_shutdown()
        if self._consumer is not None:
            await self._consumer.stop()
            await self._finish("ingest", grace)
        if self._scheduler is not None:
            self._scheduler.stop()
            await self._finish("scheduler", grace)
        if self._dispatcher is not None:
            await self._dispatcher.stop(grace)
        if self._outbox is not None:
            await self._outbox.stop()
            await self._finish("outbox", 1.0)
        for name in list(self._tasks):
            await self._finish(name, 0.0)
        if self._producer is not None:
            await self._producer.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._metrics_server is not None:
            self._metrics_server.stop()
        if self._runner is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._runner.close)
        if self._checkpointer is not None:
            self._checkpointer.stop()
        log.info("stopped")

    async def _finish(self, name: str, seconds: float) -> None:
        task = self._tasks.pop(name, None)
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), seconds)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            log.exception("background task ended with an error", extra={"task": name})


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully; SIGHUP reloads API keys."""
    runtime.tune_gc()
    app = App(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload_keys)
    try:
        await app.start()
        runtime.freeze_startup_objects()
        await stopping.wait()
        log.info("shutting down")
    finally:
        await app.stop()


def _safe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':')[0]}@{tail}"
