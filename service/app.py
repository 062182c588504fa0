"""The composition root: builds every part from the settings, starts them in dependency order
and stops them in the order that loses nothing. It holds no logic of its own."""

import asyncio
import logging
import signal
from datetime import timedelta
from typing import Protocol

import peewee as pw

from kafka import preflight
from kafka.codec import encode_attempt
from kafka.connection import KafkaConnection, KafkaSecurity
from kafka.health import PROBE_SECONDS, KafkaProbe
from kafka.ingest import IngestConsumer
from kafka.oauth import ClientCredentials, TokenFile
from kafka.outbox import OutboxPublisher
from kafka.producer import Producer
from kafka.publishing import AuditSender, EventPublisher
from service import runtime
from service.api.keys import ApiKeys
from service.api.server import GrpcServer
from service.api.servicer import WebhookServicer
from service.config import Settings
from service.crypto import SecretBox
from service.engine.ahead import AheadPlanner
from service.engine.attempts import AttemptMaker, AttemptSettings
from service.engine.change_watcher import WATCH_SECONDS, ChangeWatcher
from service.engine.dispatcher import Attempts, DeliveryPolicy, Dispatcher
from service.engine.ingest_batches import BatchStorer
from service.engine.pinger import EndpointPinger
from service.engine.scheduler import RetryScheduler
from service.engine.worker_pool import WorkerPool
from service.errors import StartupError, Unavailable
from service.metrics import BacklogGauges, Metrics, MetricsEndpoint
from service.store.checkpoint import Checkpointer
from service.store.database import open_database, safe_url, sqlite_path
from service.store.migrations import migrate
from service.store.probe import DatabaseProbe
from service.store.runner import StoreRunner
from service.store.stores import Stores
from service.tasks import Periodic
from service.usecases.catalog import CatalogCache, CatalogError, CatalogService
from service.usecases.deliveries import DeliveryService
from service.usecases.retention import Retention
from service.usecases.subscriptions import SubscriptionService
from service.usecases.verification import EndpointVerifier, VerifiedWrites

log = logging.getLogger(__name__)
CATALOG_REFRESH_SECONDS = 5.0
DATABASE_PROBE_SECONDS = 1.0


class Stoppable(Protocol):
    """Every long-lived part: `start()`, then `stop(grace)`."""

    async def stop(self, grace: float) -> None: ...


def delivery_policy(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        endpoint_concurrency=settings.endpoint_concurrency,
        host_concurrency=settings.host_concurrency,
        default_rate_limit=settings.default_rate_limit,
        circuit_failures=settings.circuit_failures,
        circuit_cooldown=settings.circuit_cooldown_seconds,
        max_in_flight=settings.max_in_flight,
        max_unwritten=settings.max_unwritten,
        attempt_timeout=settings.attempt_timeout_seconds,
        lease=timedelta(seconds=settings.delivery_lease_seconds),
    )


def attempt_settings(settings: Settings) -> AttemptSettings:
    return AttemptSettings(
        allow_http=settings.allow_http,
        allow_cidrs=settings.ssrf_allow_cidrs,
        timeout_seconds=settings.attempt_timeout_seconds,
        ca_file=settings.delivery_ca_file,
        schedule=settings.retry_schedule,
        jitter=settings.retry_jitter,
        disable_after=timedelta(seconds=settings.disable_after_seconds),
        audit_topic=settings.kafka_audit_topic,
        encode_audit=encode_attempt,
        keep_connections=settings.max_in_flight,  # as many as requests may be at once
    )


def kafka_connection(settings: Settings) -> KafkaConnection:
    """Every Kafka client's connection; secrets are read from their files when used."""
    password_file = settings.kafka_sasl_password_file

    def password() -> str:
        if password_file is not None:
            return password_file.read_text().strip()
        return settings.kafka_sasl_password

    provider: TokenFile | ClientCredentials | None = None
    if settings.kafka_oauth_token_file is not None:
        provider = TokenFile(settings.kafka_oauth_token_file)
    elif settings.kafka_oauth_token_url:
        provider = ClientCredentials(
            settings.kafka_oauth_token_url,
            settings.kafka_sasl_username,
            password,
            settings.kafka_oauth_scope,
        )
    security = KafkaSecurity(
        protocol=settings.kafka_security_protocol,
        ca_file=settings.kafka_ssl_ca_file,
        cert_file=settings.kafka_ssl_cert_file,
        key_file=settings.kafka_ssl_key_file,
        check_hostname=settings.kafka_ssl_check_hostname,
        mechanism=settings.kafka_sasl_mechanism,
        username=settings.kafka_sasl_username,
        password=password,
        token_provider=provider,
    )
    return KafkaConnection(settings.kafka_bootstrap_servers, settings.kafka_client_id, security)


def kafka_needs(settings: Settings) -> preflight.Needs:
    """What `serve` does on the cluster (ingest topics named by a pattern are not known)."""
    return preflight.Needs(
        read=[] if settings.kafka_topic_pattern else settings.kafka_topics,
        write=[settings.kafka_audit_topic, settings.kafka_dead_letter_topic],
        group=settings.kafka_group_id,
    )


class App:
    """One service instance. Tests may pass their own database, attempt maker or producer."""

    def __init__(
        self,
        settings: Settings,
        *,
        database: pw.Database | None = None,
        attempts: Attempts | None = None,
        producer: Producer | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.keys = ApiKeys(settings.api_keys_file)
        # Nothing connects before start().
        self.database = database or open_database(settings.database_url)
        self.stores = Stores.over(self.database, SecretBox(settings.secret_encryption_keys))
        self.policy = delivery_policy(settings)
        self.kafka = kafka_connection(settings)
        self.producer = producer or (
            Producer(self.kafka, idempotence=settings.kafka_idempotence)
            if settings.kafka_enabled
            else None
        )
        # Signs and sends in child processes (WEBHOOKS_DELIVERY_WORKERS).
        self.delivery_worker: WorkerPool | None = None
        if attempts is None and settings.delivery_workers:
            self.delivery_worker = WorkerPool(attempt_settings(settings), settings.delivery_workers)
        self._attempts = attempts or self.delivery_worker
        # Built in start(), on the event loop; None until then.
        self.runner: StoreRunner | None = None
        self.catalog: CatalogCache | None = None
        self.dispatcher: Dispatcher | None = None
        self.planner: AheadPlanner | None = None
        self.grpc: GrpcServer | None = None
        self._checkpointer: Checkpointer | None = None
        self._scheduler: RetryScheduler | None = None
        self._consumer: IngestConsumer | None = None
        self._outbox: OutboxPublisher | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._periodic: list[Periodic] = []
        self._pinger = EndpointPinger(
            allow_http=settings.allow_http,
            allow_cidrs=settings.ssrf_allow_cidrs,
            ca_file=settings.delivery_ca_file,
            timeout_seconds=settings.verify_timeout_seconds,
        )

    @property
    def port(self) -> int:
        return self.grpc.port if self.grpc is not None else 0

    @property
    def metrics_port(self) -> int | None:
        endpoint = self._metrics_endpoint
        return endpoint.port if endpoint is not None else None

    async def start(self) -> int:
        """Starts every part; returns the bound gRPC port. Raises StartupError."""
        settings, stores, policy, metrics = self.settings, self.stores, self.policy, self.metrics
        self.keys.load()
        if settings.kafka_enabled:
            await preflight.check(self.kafka, kafka_needs(settings))

        # SQLite takes one writer at a time (the others sleep-poll for its lock): one thread.
        sqlite = sqlite_path(settings.database_url)
        is_sqlite = settings.database_url.startswith("sqlite")
        self.runner = runner = StoreRunner(
            self.database, 1 if is_sqlite else settings.store_threads, inline_reads=is_sqlite
        )
        try:
            applied = await runner.call(migrate, self.database)
        except Unavailable:
            raise StartupError(
                f"cannot reach the database at {safe_url(settings.database_url)}"
            ) from None
        if applied:
            log.info("schema migrated", extra={"versions": applied})
        if sqlite is not None:
            self._checkpointer = Checkpointer(sqlite)
            await self._checkpointer.start()
        catalog_service = CatalogService(stores.event_types)
        if settings.event_types_file is not None:
            try:
                count = await runner.call(catalog_service.load_file, settings.event_types_file)
            except CatalogError as exc:
                raise StartupError(f"WEBHOOKS_EVENT_TYPES_FILE {exc}") from None
            log.info("event type catalog loaded", extra={"count": count})
        self.catalog = catalog = CatalogCache(runner, stores.event_types)
        await catalog.refresh()

        producer = self.producer
        self._outbox = (
            OutboxPublisher(producer=producer, rows=stores.outbox, runner=runner)
            if producer is not None
            else None
        )
        # Set when ordered deliveries are stored or finished: the scheduler looks for the
        # next of their keys at once.
        ordered_ready = asyncio.Event()
        self.dispatcher = dispatcher = Dispatcher(
            runner=runner,
            store=stores.attempts,
            attempts=self._attempts or AttemptMaker(attempt_settings(settings)),
            policy=policy,
            after_write=self._outbox.notify if self._outbox is not None else lambda: None,
            after_ordered_write=ordered_ready.set,
            publish_audit=AuditSender(producer).publish if producer is not None else None,
            metrics=metrics,
        )
        await dispatcher.start()
        self.planner = planner = AheadPlanner(
            runner, stores.ingest, catalog.required_scopes, policy.lease
        )

        def subscriptions_changed(changed: set[tuple[str, str]]) -> None:
            for subscription_id, _ in changed:
                dispatcher.invalidate(subscription_id)
            planner.invalidate({tenant for _, tenant in changed})

        watcher = ChangeWatcher(runner, self.database, subscriptions_changed)
        await watcher.poll()  # where the log ends, before anything is cached
        self._scheduler = RetryScheduler(
            runner=runner,
            store=stores.attempts,
            dispatcher=dispatcher,
            policy=policy,
            interval=settings.scheduler_interval_seconds,
            wake=ordered_ready,
        )
        await self._scheduler.start()
        gauges = BacklogGauges(
            metrics,
            lambda: runner.call(stores.deliveries.pending_count),
            lambda: runner.call(stores.outbox.size),
        )
        self._periodic = [
            Periodic("catalog-refresh", CATALOG_REFRESH_SECONDS, catalog.refresh),
            Periodic("metrics-sample", settings.metrics_interval_seconds, gauges.sample),
            Periodic("subscription-changes", WATCH_SECONDS, watcher.poll),
        ]
        if settings.retention_seconds:
            retention = timedelta(seconds=settings.retention_seconds)
            pruning = Retention(runner, self.database, retention, metrics)
            self._periodic.append(
                Periodic("retention", settings.retention_interval_seconds, pruning.prune)
            )

        if producer is not None:
            if self.delivery_worker is not None:
                # Now rather than at the first attempt, whose send would wait for it.
                await self.delivery_worker.start()
            await producer.start(wait=False)
            self._consumer = IngestConsumer(
                connection=self.kafka,
                topic_names=settings.kafka_topics,
                topic_pattern=settings.kafka_topic_pattern,
                group_id=settings.kafka_group_id,
                dead_letter_topic=settings.kafka_dead_letter_topic,
                producer=producer,
                store_batch=BatchStorer(
                    runner=runner,
                    store=stores.ingest,
                    planner=planner,
                    dispatcher=dispatcher,
                    required_scopes=catalog.required_scopes,
                    lease=policy.lease,
                    metrics=metrics,
                    after_ordered=ordered_ready.set,
                ),
                check=catalog,
                default_tenant=settings.default_tenant,
                max_event_bytes=settings.max_event_bytes,
                session_timeout_ms=settings.kafka_session_timeout_ms,
                fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
                metrics=metrics,
            )
            await self._consumer.start()
            assert self._outbox is not None
            await self._outbox.start()

        def subscription_changed(subscription_id: str) -> None:
            dispatcher.invalidate(subscription_id)
            planner.invalidate()

        publisher = (
            EventPublisher(producer, settings.kafka_topics[0], settings.max_event_bytes)
            if producer is not None
            else None
        )
        deliveries = DeliveryService(
            runner=runner,
            queries=stores.deliveries,
            ingest=stores.ingest,
            event_types=stores.event_types,
            subscriptions=stores.subscriptions,
            dispatcher=dispatcher,
            policy=policy,
            publish=publisher.publish if publisher is not None else None,
            replay_limit=settings.replay_max_events,
            wake=ordered_ready.set,
        )
        subscriptions = SubscriptionService(stores.subscriptions, stores.event_types, settings)
        verifier = EndpointVerifier(
            self._pinger.ping,
            mandatory=settings.verify_endpoints,
            timeout_seconds=settings.verify_timeout_seconds,
        )
        servicer = WebhookServicer(
            runner,
            subscriptions,
            VerifiedWrites(subscriptions, runner.call, verifier),
            catalog_service,
            deliveries,
            self.keys.current,
            on_subscription_change=subscription_changed,
            on_catalog_change=catalog.changed,
            metrics=metrics,
        )
        self.grpc = grpc_server = GrpcServer(settings, servicer)
        await grpc_server.start()
        database = DatabaseProbe(runner, self.database, grpc_server.set_database_health, metrics)
        await database.probe()
        self._periodic.append(Periodic("database-health", DATABASE_PROBE_SECONDS, database.probe))
        if producer is not None:
            probe = KafkaProbe(producer, grpc_server.set_kafka_health, metrics)
            await probe.probe()
            self._periodic.append(Periodic("kafka-health", PROBE_SECONDS, probe.probe))
        for periodic in self._periodic:
            await periodic.start()
        log.info("serving gRPC", extra={"address": settings.grpc_address, "port": self.port})
        if settings.metrics_address:
            self._metrics_endpoint = MetricsEndpoint(metrics, settings.metrics_address)
            await self._metrics_endpoint.start()
            log.info("serving metrics", extra={"port": self.metrics_port})
        return self.port

    async def stop(self) -> None:
        """NOT_SERVING; gRPC refuses new calls and lets those in flight finish; then ingest
        (its batches stored and committed), the retry scheduler, the dispatcher (in-flight
        attempts finished and written, the delivery worker closed), the outbox, the
        producer and the store. Safe after a start that failed half way."""
        grace = self.settings.shutdown_grace_seconds
        if self.grpc is not None:
            await self.grpc.stop(grace)
        parts: list[Stoppable | None] = [
            self._pinger,
            *self._periodic,
            self._consumer,
            self._scheduler,
            self.dispatcher,
            self._outbox,
            self.producer,
            self.runner,
            self._checkpointer,
            self._metrics_endpoint,
        ]
        for part in parts:
            if part is not None:
                await part.stop(grace)
        if self.dispatcher is None and self.delivery_worker is not None:
            await self.delivery_worker.close()
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully; SIGHUP reloads API keys."""
    runtime.tune_gc()
    app = App(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, app.keys.reload)
    try:
        await app.start()
        runtime.freeze_startup_objects()
        await stopping.wait()
        log.info("shutting down")
    finally:
        await app.stop()
