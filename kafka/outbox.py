"""Publishes the audit outbox to Kafka; a row is deleted only after the broker acked it."""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from kafka.producer import Producer
from kafka.publishing import PROTOBUF_HEADERS
from service.domain.pipeline import OutboxRecord
from service.errors import Unavailable
from service.logs import Outage
from service.tasks import finish

log = logging.getLogger(__name__)
BATCH = 1000
R = TypeVar("R")


class OutboxRows(Protocol):
    """The store's outbox (service.store.outbox.OutboxStore); its methods are synchronous."""

    def batch(self, limit: int) -> list[OutboxRecord]: ...

    def delete(self, ids: Sequence[int]) -> None: ...

    def release(self, ids: Sequence[int]) -> None: ...


class StoreCalls(Protocol):
    """Runs a store method on a store thread (service.store.runner.StoreRunner)."""

    async def call(self, fn: Callable[..., R], /, *args: Any) -> R: ...


class OutboxPublisher:
    """Drains in batches; while the broker is away it keeps the rows and tries again."""

    def __init__(
        self,
        *,
        producer: Producer,
        rows: OutboxRows,
        runner: StoreCalls,
        idle_seconds: float = 0.05,
    ) -> None:
        self._producer = producer
        self._rows = rows
        self._runner = runner
        self._idle = idle_seconds
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outage = Outage(log, "audit outbox not published yet")

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="outbox")

    def notify(self) -> None:
        """New rows were written: publish soon."""
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.5
        while not self._stopped.is_set():
            try:
                published = await self.drain_once()
                backoff = 0.5
                self._outage.ended()
            except Unavailable as exc:
                self._outage.failed(exc.message)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if published < BATCH:
                await self._sleep(self._idle if published else 1.0)

    async def drain_once(self) -> int:
        rows = await self._runner.call(self._rows.batch, BATCH)
        if not rows:
            return 0
        ids = [row.id for row in rows]
        try:
            await self._producer.send_all(
                [(row.topic, row.key, row.value, PROTOBUF_HEADERS) for row in rows]
            )
        except Unavailable:
            with contextlib.suppress(Unavailable):
                await self._runner.call(self._rows.release, ids)
            raise
        await self._runner.call(self._rows.delete, ids)
        return len(rows)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def stop(self, grace: float) -> None:
        """Publishes what it can in a last pass (rows that remain go out after the restart)."""
        self._stopped.set()
        self._wake.set()
        if self._task is not None:
            await finish(self._task, grace)
        with contextlib.suppress(Unavailable):
            while await self.drain_once() == BATCH:
                pass
