"""Several delivery workers (WEBHOOKS_DELIVERY_WORKERS), used as one: each attempt goes to
the worker with the fewest attempts in flight, so work spreads evenly whatever the
endpoints' speeds."""

import asyncio

from service.domain.outcomes import AttemptResult
from service.domain.pipeline import Job, RecordedAttempt, Target
from service.engine.attempts import AttemptSettings
from service.engine.worker import DeliveryWorker


class WorkerPool:
    def __init__(self, settings: AttemptSettings, count: int) -> None:
        self.workers = [DeliveryWorker(settings) for _ in range(count)]

    @property
    def pid(self) -> int | None:
        """The first worker's process id (None before it started)."""
        return self.workers[0].pid

    async def start(self) -> None:
        await asyncio.gather(*(worker.start() for worker in self.workers))

    async def make(self, job: Job, target: Target) -> RecordedAttempt:
        return await self._least_busy().make(job, target)

    def attempt(self, job: Job, target: Target) -> "asyncio.Future[RecordedAttempt]":
        return self._least_busy().attempt(job, target)

    def skip(self, job: Job, target: Target, result: AttemptResult) -> RecordedAttempt:
        return self.workers[0].skip(job, target, result)

    async def stop(self, grace: float = 0.0) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.gather(*(worker.close() for worker in self.workers))

    def _least_busy(self) -> DeliveryWorker:
        workers = self.workers
        if len(workers) == 1:
            return workers[0]
        return min(workers, key=lambda worker: worker.in_flight)
