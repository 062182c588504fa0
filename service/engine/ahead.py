"""Plans an ingest batch's deliveries before its transaction, from a cached view of the
enabled subscriptions, so that they are sent while the transaction runs.

Why: at 1,000 events/s the transaction and its wait for the store thread were 8-13 ms of
the 26 ms median produce-to-receipt (make bench, latency). The transaction still decides:
a job it did not store (its subscription went away meanwhile) has its attempt made but
never recorded, and a pair only it matched (a subscription created meanwhile) is sent
after it, as every delivery was before."""

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from service.domain import fan_out
from service.domain.clock import unix_time, utcnow
from service.domain.models import Event
from service.domain.pipeline import Job
from service.store.ingest import IngestStore
from service.store.runner import StoreRunner

# How long the view of a tenant's subscriptions is trusted; this instance's own changes
# clear it at once, another instance's show within this long (and in the transaction).
MATCHERS_TTL_SECONDS = 1.0
# Larger batches are planned in their transaction, on the store thread: ingest takes at
# most 200 records at once, so a batch near that means records were waiting, the event
# loop is the busiest thread and sending a few ms sooner gains little. At full load
# (batches of 200) planning them here gave 0.55 and 0.59 x the reference end to end
# against 0.61 and 0.61 x, run alternately; at 1,000 events/s a cap of 50 sent the
# batches that follow a stall through the transaction, and p99 rose to 108-116 ms against
# 60 ms without it (make bench).
AHEAD_MAX_EVENTS = 150


class AheadPlanner:
    """Plans on the event loop; `plan` and `ended` pair up around each transaction."""

    def __init__(
        self,
        runner: StoreRunner,
        store: IngestStore,
        required_scopes: Callable[[], Mapping[str, str]],
        lease: timedelta,
    ) -> None:
        self._runner = runner
        self._store = store
        self._required_scopes = required_scopes
        self._lease = lease
        self._matchers: dict[str, tuple[float, list[fan_out.Matcher]]] = {}
        self._generation = 0  # changes at every invalidate: a read begun before is not kept
        # (tenant, event id) of the events planned ahead whose transaction has not ended: a
        # copy in a later batch (a producer's retry) is left to its own transaction, which
        # finds the first one stored, or the copy would be sent twice.
        self._planning: set[tuple[str, str]] = set()
        # The transactions those were sent ahead of, by event: a later copy's transaction
        # waits for its event's, or on PostgreSQL (several store threads) it could commit
        # first, find nothing stored and send the event a second time.
        self._storing: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def plan(self, events: Sequence[Event]) -> list[Job]:
        """Jobs for the events neither stored nor planned already (a re-consumed one is left
        to the transaction, which finds its deliveries stored). `ended` must follow once
        the batch's transaction ended, however."""
        if len(events) > AHEAD_MAX_EVENTS:
            return []
        planning = self._planning
        fresh = [e for e in events if (e.tenant, e.id) not in planning]
        unseen = await self._runner.read_first(self._store.unseen, fresh) if fresh else []
        # Again: another batch may have planned one of them while the store read.
        unseen = [e for e in unseen if (e.tenant, e.id) not in planning]
        if not unseen:
            return []
        planning.update((e.tenant, e.id) for e in unseen)
        try:
            subscriptions = await self._subscriptions({event.tenant for event in unseen})
        except BaseException:
            planning.difference_update((e.tenant, e.id) for e in unseen)
            raise
        lease_until = unix_time(utcnow() + self._lease)
        jobs = fan_out.plan_jobs(unseen, subscriptions, self._required_scopes(), lease_until)
        # Events that no subscription takes send nothing ahead: nothing to keep apart.
        planning.difference_update(
            {(e.tenant, e.id) for e in unseen} - {(j.tenant, j.event_id) for j in jobs}
        )
        return jobs

    def storing(self, jobs: Sequence[Job], stored: "asyncio.Future[Any]") -> None:
        """`jobs` (from `plan`) are sent ahead of the transaction `stored`."""
        for job in jobs:
            self._storing[(job.tenant, job.event_id)] = stored

    def earlier(self, events: Sequence[Event]) -> set["asyncio.Future[Any]"]:
        """The transactions in flight that copies of these events were sent ahead of."""
        found = (self._storing.get((e.tenant, e.id)) for e in events)
        return {stored for stored in found if stored is not None}

    def ended(self, jobs: Sequence[Job]) -> None:
        """The transaction that `jobs` (from `plan`) were planned ahead of has ended."""
        keys = {(job.tenant, job.event_id) for job in jobs}
        self._planning.difference_update(keys)
        for key in keys:
            self._storing.pop(key, None)

    def invalidate(self) -> None:
        """Forgets every cached view (a subscription changed)."""
        self._matchers.clear()
        self._generation += 1

    async def _subscriptions(self, tenants: Iterable[str]) -> dict[str, list[fan_out.Matcher]]:
        now = time.monotonic()
        out: dict[str, list[fan_out.Matcher]] = {}
        stale: list[str] = []
        for tenant in tenants:
            seen, matchers = self._matchers.get(tenant, (-1e9, []))
            if now - seen > MATCHERS_TTL_SECONDS:
                stale.append(tenant)
            else:
                out[tenant] = matchers
        if stale:
            generation = self._generation
            loaded = await self._runner.read_first(self._store.matchers, stale)
            for tenant in stale:
                out[tenant] = loaded.get(tenant, [])
                if generation == self._generation:
                    self._matchers[tenant] = (now, out[tenant])
        return out
