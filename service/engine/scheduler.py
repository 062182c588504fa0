"""The retry scheduler: claims due deliveries from the store and hands them to the dispatcher."""

import asyncio
import logging

from service.engine.dispatcher import DeliveryPolicy, Dispatcher
from service.errors import Unavailable
from service.store.attempts import AttemptStore
from service.store.runner import StoreRunner
from service.tasks import finish, log_failure

log = logging.getLogger(__name__)
CLAIM_BATCH = 500


class RetryScheduler:
    """Polls every `interval` seconds, at once while it keeps finding full batches, and
    when `wake` is set (ordered deliveries were stored, or finished: the next of their keys
    may be due)."""

    def __init__(
        self,
        *,
        runner: StoreRunner,
        store: AttemptStore,
        dispatcher: Dispatcher,
        policy: DeliveryPolicy,
        interval: float,
        wake: asyncio.Event | None = None,
    ) -> None:
        self._runner = runner
        self._store = store
        self._dispatcher = dispatcher
        self._policy = policy
        self._interval = interval
        self._wake = wake or asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="scheduler")
        self._task.add_done_callback(log_failure)

    async def run(self) -> None:
        while not self._stopped.is_set():
            claimed = 0
            limit = min(CLAIM_BATCH, self._dispatcher.free)
            if limit > 0:
                try:
                    jobs = await self._runner.call(self._store.claim_due, limit, self._policy.lease)
                except Unavailable:
                    jobs = []
                if jobs:
                    claimed = len(jobs)
                    await self._dispatcher.submit(jobs)
            if claimed < limit or limit == 0:
                await self._pause()

    async def _pause(self) -> None:
        """Until the interval passes, the scheduler is woken or stopped."""
        waits = {
            asyncio.ensure_future(self._stopped.wait()),
            asyncio.ensure_future(self._wake.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=self._interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        self._wake.clear()

    async def stop(self, grace: float) -> None:
        """Claims nothing more; a hand-off in progress gets `grace` seconds."""
        self._stopped.set()
        if self._task is not None:
            await finish(self._task, grace)
