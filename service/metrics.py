"""Prometheus metrics: one registry per service instance, served over HTTP."""

import socket
from collections.abc import Awaitable, Callable
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from service.errors import StartupError

# Loopback deliveries take about a millisecond, real endpoints up to the 15 s timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)
# From the producer's event time to a 2xx: seconds normally, hours when retried.
END_TO_END_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300, 1800, 7200, 36000, 86400)
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


def status_class(http_status: int) -> str:
    """`2xx`..`5xx`, or `none` when no answer came (timeout, refused, SSRF...)."""
    return f"{http_status // 100}xx" if 100 <= http_status <= 599 else "none"


class Metrics:
    """Every metric the service exports. Tests build several instances in one process,
    so each has its own registry rather than the global one."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.events_consumed = Counter(
            "webhooks_events_consumed_total",
            "Kafka records consumed, by outcome (accepted or dead_lettered) and reason",
            ["outcome", "reason"],
            registry=registry,
        )
        self.deliveries_created = Counter(
            "webhooks_deliveries_created_total",
            "Deliveries created from consumed events (one per matching subscription)",
            registry=registry,
        )
        self.deliveries_filtered = Counter(
            "webhooks_deliveries_filtered_total",
            "Deliveries not created because the subscription's filter refused the event, by"
            " result (false, or error: evaluating it failed, e.g. a field absent from data)",
            ["result"],
            registry=registry,
        )
        self.deliveries_finished = Counter(
            "webhooks_deliveries_finished_total",
            "Deliveries that reached a final state, by outcome (succeeded or failed)",
            ["outcome"],
            registry=registry,
        )
        self.deliveries_deferred = Counter(
            "webhooks_deliveries_deferred_total",
            "Deliveries handed back to the store to be sent later without an attempt, by"
            " reason (endpoint_backlog: more than its lane holds; tenant_share: capacity was full,"
            " the tenant held half of it and 1.5 x its share, and too many were parked)",
            ["reason"],
            registry=registry,
        )
        self.audit_records = Counter(
            "webhooks_audit_records_total",
            "Attempts' audit records by how they reached Kafka (direct: acked before the"
            " attempt was stored; outbox: stored first, published by the outbox while the"
            " broker was away or slow, or with Kafka off)",
            ["path"],
            registry=registry,
        )
        self.attempts_unrecorded = Counter(
            "webhooks_attempts_unrecorded_total",
            "Attempts made ahead of their ingest transaction for deliveries it did not store"
            " (their subscription went away meanwhile, or it failed and the events are read"
            " again): made, never recorded",
            registry=registry,
        )
        self.attempts = Counter(
            "webhooks_delivery_attempts_total",
            "HTTP delivery attempts, by outcome and response status class",
            ["outcome", "status_class"],
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "webhooks_delivery_attempt_duration_seconds",
            "Time of one HTTP attempt, request sent to response read",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.event_to_delivery_seconds = Histogram(
            "webhooks_event_to_delivery_seconds",
            "From the event's time to its successful delivery",
            buckets=END_TO_END_BUCKETS,
            registry=registry,
        )
        self.pending_deliveries = Gauge(
            "webhooks_pending_deliveries",
            "Deliveries waiting for an attempt or a retry (sampled)",
            registry=registry,
        )
        self.kafka_up = Gauge(
            "webhooks_kafka_up",
            "1 while a Kafka broker answers the service's metadata requests (every 2 s), else 0",
            registry=registry,
        )
        self.requests_in_flight = Gauge(
            "webhooks_requests_in_flight",
            "Requests at endpoints now (each host takes at most WEBHOOKS_HOST_CONCURRENCY)",
            registry=registry,
        )
        self.deliveries_held = Gauge(
            "webhooks_deliveries_held",
            "Deliveries queued in lanes or at endpoints (at most WEBHOOKS_MAX_IN_FLIGHT;"
            " beyond, ingest waits)",
            registry=registry,
        )
        self.deliveries_parked = Gauge(
            "webhooks_deliveries_parked",
            "A crowding tenant's deliveries waiting for capacity in memory without holding"
            " up ingest (at most 4 x WEBHOOKS_MAX_IN_FLIGHT; beyond, deferred as tenant_share)",
            registry=registry,
        )
        self.results_unwritten = Gauge(
            "webhooks_results_unwritten",
            "Attempts' results waiting to be written (at most WEBHOOKS_MAX_UNWRITTEN; beyond,"
            " ingest waits)",
            registry=registry,
        )
        self.database_up = Gauge(
            "webhooks_database_up",
            "1 while the database answers a probe within 2 s (every second), else 0",
            registry=registry,
        )
        self.outbox_backlog = Gauge(
            "webhooks_audit_outbox_backlog",
            "Audit records written but not yet acknowledged by Kafka (sampled)",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "webhooks_consumer_lag",
            "Records on the ingest topic not yet consumed, per partition",
            ["topic", "partition"],
            registry=registry,
        )
        self.rpcs = Counter(
            "webhooks_grpc_server_handled_total",
            "gRPC calls completed, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "webhooks_grpc_server_handling_seconds",
            "Time to handle a gRPC call, by method",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.pruned_rows = Counter(
            "webhooks_retention_pruned_total",
            "Rows deleted by retention, by table",
            ["table"],
            registry=registry,
        )

    def serve(self, address: str) -> "MetricsServer":
        """prometheus_client's start_http_server, but its loop polls for shutdown every
        50 ms rather than 500: stopping a service would otherwise wait for it."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM)[0][0]
        server_class = type("Server", (ThreadingWSGIServer,), {"address_family": family})
        server: WSGIServer = make_server(
            host, int(port), make_wsgi_app(self.registry), server_class, handler_class=_Quiet
        )
        thread = Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="metrics", daemon=True
        )
        thread.start()
        return MetricsServer(server, thread)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class MetricsServer:
    """The scrape endpoint's HTTP server, running on its own thread."""

    def __init__(self, server: WSGIServer, thread: Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class MetricsEndpoint:
    """`/metrics` on WEBHOOKS_METRICS_ADDRESS, served from its own thread."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        self._metrics = metrics
        self._address = address
        self._server: MetricsServer | None = None
        self.port: int | None = None

    async def start(self) -> None:
        try:
            self._server = self._metrics.serve(self._address)
        except OSError as exc:
            raise StartupError(
                f"WEBHOOKS_METRICS_ADDRESS {self._address}: {exc.strerror}"
            ) from None
        self.port = self._server.port

    async def stop(self, grace: float = 0.0) -> None:
        if self._server is not None:
            self._server.stop()


class BacklogGauges:
    """Samples the pending deliveries and the outbox backlog into their gauges."""

    def __init__(
        self,
        metrics: Metrics,
        pending: Callable[[], Awaitable[int]],
        outbox: Callable[[], Awaitable[int]],
    ) -> None:
        self._metrics = metrics
        self._pending = pending
        self._outbox = outbox

    async def sample(self) -> None:
        self._metrics.pending_deliveries.set(await self._pending())
        self._metrics.outbox_backlog.set(await self._outbox())
