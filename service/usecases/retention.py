"""Retention: history older than WEBHOOKS_RETENTION_SECONDS is deleted, a bounded
transaction at a time."""

import logging
from datetime import timedelta

import peewee as pw

from service.domain.clock import utcnow
from service.metrics import Metrics
from service.store.idempotency import IDEMPOTENCY_WINDOW
from service.store.retention import prune_batch
from service.store.runner import StoreRunner

log = logging.getLogger(__name__)
PRUNE_BATCH = 1000


class Retention:
    def __init__(
        self, runner: StoreRunner, db: pw.Database, retention: timedelta, metrics: Metrics
    ) -> None:
        self._runner = runner
        self._db = db
        self._retention = retention
        self._metrics = metrics

    async def prune(self) -> dict[str, int]:
        """Deletes finished deliveries, their attempts, events without deliveries and old
        replay records; returns the rows deleted per table."""
        now = utcnow()
        before = now - self._retention
        totals: dict[str, int] = {}
        while True:
            counts = await self._runner.call(
                prune_batch, self._db, before, now - IDEMPOTENCY_WINDOW, PRUNE_BATCH
            )
            for table, count in counts.items():
                totals[table] = totals.get(table, 0) + count
                self._metrics.pruned_rows.labels(table).inc(count)
            if counts["deliveries"] < PRUNE_BATCH and counts["events"] < PRUNE_BATCH:
                break
        if any(totals.values()):
            log.info("retention pruned old history", extra=totals)
        return totals
