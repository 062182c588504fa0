"""Whether the database answers: the `webhooks.database` health status (and the whole
service's) and the webhooks_database_up gauge."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import peewee as pw

from service.errors import Unavailable
from service.metrics import Metrics
from service.store.runner import StoreRunner

PROBE_SECONDS = 2.0


class DatabaseProbe:
    def __init__(
        self,
        runner: StoreRunner,
        database: pw.Database,
        report: Callable[[bool], Awaitable[None]],
        metrics: Metrics,
    ) -> None:
        self._runner = runner
        self._db = database
        self._report = report
        self._metrics = metrics

    async def probe(self) -> None:
        """`SELECT 1` ahead of queued store work, waiting at most PROBE_SECONDS: a database
        too slow to answer that counts as away."""
        up = False
        with contextlib.suppress(Unavailable, TimeoutError):
            async with asyncio.timeout(PROBE_SECONDS):
                await self._runner.call_first(self._ping)
                up = True
        self._metrics.database_up.set(1 if up else 0)
        await self._report(up)

    def _ping(self) -> None:
        self._db.execute_sql("SELECT 1")  # type: ignore[no-untyped-call]
