"""Publishes the audit outbox to Kafka; a row is deleted only after the broker acked it."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from kafka.producer import Producer
from service.errors import Unavailable

log = logging.getLogger(__name__)
BATCH = 1000
AUDIT_HEADERS = [("content-type", b"application/x-protobuf")]


class OutboxItem(Protocol):
    id: int
    topic: str
    key: bytes | None
    value: bytes


class OutboxPublisher:
    """Drains in batches; while the broker is away it keeps the rows and tries again."""

    def __init__(
        self,
        *,
        producer: Producer,
        fetch: Callable[[int], Awaitable[Sequence[OutboxItem]]],
        delete: Callable[[list[int]], Awaitable[None]],
        release: Callable[[list[int]], Awaitable[None]],
        idle_seconds: float = 0.05,
    ) -> None:
        self._producer = producer
        self._fetch = fetch
        self._delete = delete
        self._release = release
        self._idle = idle_seconds
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()

    def notify(self) -> None:
        """New rows were written: publish soon."""
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.5
        while not self._stopped.is_set():
            try:
                published = await self.drain_once()
                backoff = 0.5
            except Unavailable as exc:
                log.warning("audit outbox not published yet", extra={"error": exc.message})
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if published < BATCH:
                await self._sleep(self._idle if published else 1.0)

    async def drain_once(self) -> int:
        rows = await self._fetch(BATCH)
        if not rows:
            return 0
        ids = [row.id for row in rows]
        try:
            await self._producer.send_all(
                [(row.topic, row.key, row.value, AUDIT_HEADERS) for row in rows]
            )
        except Unavailable:
            with contextlib.suppress(Unavailable):
                await self._release(ids)
            raise
        await self._delete(ids)
        return len(rows)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def stop(self) -> None:
        """Publishes what it can in a last pass (rows that remain go out after the restart)."""
        self._stopped.set()
        self._wake.set()
        with contextlib.suppress(Unavailable):
            while await self.drain_once() == BATCH:
                pass
