"""Stores an ingest batch: plans what can be sent ahead of its transaction, runs the
transaction, and hands the rest of its jobs to the dispatcher."""

import asyncio
import functools
from collections.abc import Callable, Mapping
from datetime import timedelta

from service.domain.event_rules import EVENT_ID_REUSED
from service.domain.models import Event
from service.domain.pipeline import Ingested, StoredBatch
from service.engine.ahead import AheadPlanner
from service.engine.dispatcher import Dispatcher
from service.metrics import Metrics
from service.store.ingest import IngestStore
from service.store.runner import StoreRunner


class BatchStorer:
    """The ingest consumer's `store_batch`."""

    def __init__(
        self,
        *,
        runner: StoreRunner,
        store: IngestStore,
        planner: AheadPlanner,
        dispatcher: Dispatcher,
        required_scopes: Callable[[], Mapping[str, str]],
        lease: timedelta,
        metrics: Metrics,
        after_ordered: Callable[[], None] = lambda: None,
    ) -> None:
        self._runner = runner
        self._store = store
        self._planner = planner
        self._dispatcher = dispatcher
        self._required_scopes = required_scopes
        self._lease = lease
        self._metrics = metrics
        self._after_ordered = after_ordered
        # Ends when the latest batch's transaction has: the next waits for it.
        self._last: asyncio.Future[None] | None = None

    async def __call__(self, events: list[Event]) -> StoredBatch:
        # A batch that may make ordered deliveries commits after every batch before it, so a
        # partition's events get their rows (whose ids order ordered deliveries) in Kafka's
        # order, and no later event's row is seen while an earlier one's transaction is
        # open. Waited for before planning: holding nothing planned meanwhile, it cannot
        # deadlock with those. Other batches do not wait (it costs latency: p50 +1.6 ms).
        previous, turn = self._last, asyncio.get_running_loop().create_future()
        self._last = turn  # ends once this batch's transaction and every earlier one have

        def ended() -> None:
            if previous is None or previous.done():
                _end(turn)
            else:
                previous.add_done_callback(lambda _: _end(turn))

        try:
            if previous is not None and self._planner.may_order({e.tenant for e in events}):
                await asyncio.shield(previous)
            return await self._batch(events, ended)
        finally:
            ended()

    async def _batch(self, events: list[Event], ended: Callable[[], None]) -> StoredBatch:
        planner, dispatcher = self._planner, self._dispatcher
        await self._settled(events)
        ahead = await planner.plan(events)
        mine = {(job.tenant, job.event_id) for job in ahead}
        if planner.earlier([e for e in events if (e.tenant, e.id) not in mine]):
            # Another batch planned copies of these events meanwhile: this one sends nothing
            # ahead (holding nothing, it cannot deadlock with that one) and waits for it.
            planner.ended(ahead)
            ahead = []
            await self._settled(events)
        # No await since the last check: no copy can be planned before this transaction
        # starts. First in the store's queue: an event waits for nothing already accepted.
        stored = asyncio.ensure_future(
            self._runner.call_first(
                self._store.ingest, events, self._required_scopes(), self._lease, ahead
            )
        )
        stored.add_done_callback(lambda _: ended())
        stored.add_done_callback(functools.partial(self._created, len(ahead)))
        if ahead:
            stored.add_done_callback(lambda _: planner.ended(ahead))
            await dispatcher.submit(ahead, stored)
        # Shielded: the transaction runs on whatever happens here, and the dispatcher must
        # learn how it ended.
        ingested = await asyncio.shield(stored)
        if ingested.ordered:
            self._after_ordered()  # stored for the scheduler, which sends them in turn
        refused, failed = ingested.filtered
        if refused:
            self._metrics.deliveries_filtered.labels("false").inc(refused)
        if failed:
            self._metrics.deliveries_filtered.labels("error").inc(failed)
        return StoredBatch(
            lambda: dispatcher.submit(ingested.jobs),
            [(index, EVENT_ID_REUSED) for index in ingested.reused_ids],
        )

    def _created(self, ahead: int, stored: "asyncio.Future[Ingested]") -> None:
        """Counts the deliveries a transaction stored when it ends, not once they are handed
        on (a big fan-out's could wait for capacity long after)."""
        if not stored.cancelled() and stored.exception() is None:
            ingested = stored.result()
            self._metrics.deliveries_created.inc(
                ahead - len(ingested.not_stored) + len(ingested.jobs)
            )

    async def _settled(self, events: list[Event]) -> None:
        """Waits until no transaction that copies of these events were sent ahead of is in
        flight: this batch's transaction then finds those copies stored."""
        while earlier := self._planner.earlier(events):
            await asyncio.wait(earlier)


def _end(turn: "asyncio.Future[None]") -> None:
    if not turn.done():
        turn.set_result(None)
