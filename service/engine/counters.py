"""The delivery engine's metrics and attempt log lines, with labelled children cached."""

import logging
from datetime import datetime
from typing import Any

from service.domain.outcomes import Outcome
from service.domain.pipeline import AttemptRecord, Job
from service.metrics import Metrics, status_class

log = logging.getLogger("service.engine.dispatcher")


class DeliveryCounters:
    """Counts on the hot path: `labels()` costs more than the increment, so children are
    kept by (metric, labels)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._children: dict[tuple[Any, ...], Any] = {}

    def attempt(self, job: Job, record: AttemptRecord, now: datetime) -> None:
        """Counts and logs one finished attempt."""
        metrics = self._metrics
        outcome = record.outcome.name.lower()
        self._child(metrics.attempts, outcome, status_class(record.http_status)).inc()
        metrics.attempt_seconds.observe(record.latency_ms / 1000)
        if record.outcome != Outcome.RETRY_SCHEDULED and not job.test:
            self._child(metrics.deliveries_finished, outcome).inc()
        if record.outcome == Outcome.SUCCEEDED and job.event_time is not None and not job.test:
            metrics.event_to_delivery_seconds.observe(
                max(0.0, (now - job.event_time).total_seconds())
            )
        # Failures at INFO for the operator; successes only at DEBUG (thousands a second).
        level = logging.DEBUG if record.outcome == Outcome.SUCCEEDED else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "delivery attempt " + outcome,
                extra={
                    "delivery_id": record.delivery_id,
                    "subscription_id": record.subscription_id,
                    "event_id": record.event_id,
                    "event_type": record.event_type,
                    "attempt": record.attempt_number,
                    "http_status": record.http_status,
                    "error_kind": record.error_kind.name,
                    "latency_ms": record.latency_ms,
                },
            )

    def deferred(self, reason: str, count: int) -> None:
        if count:
            self._child(self._metrics.deliveries_deferred, reason).inc(count)

    def audited(self, path: str, count: int) -> None:
        if count:
            self._child(self._metrics.audit_records, path).inc(count)

    def unrecorded(self, count: int) -> None:
        self._metrics.attempts_unrecorded.inc(count)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
