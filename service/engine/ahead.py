"""Plans an ingest batch's deliveries before its transaction, from a cached view of the
enabled subscriptions, so that they are sent while the transaction runs.

Why: the transaction and its wait for the store thread were a third of the median
produce-to-receipt time. The transaction still decides:
a job it did not store (its subscription went away meanwhile) has its attempt made but
never recorded, and a pair only it matched (a subscription created meanwhile) is sent
after it, as every delivery was before."""

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta

from service.domain import fan_out
from service.domain.clock import unix_time, utcnow
from service.domain.models import Event
from service.domain.pipeline import Job
from service.store.ingest import IngestStore
from service.store.runner import StoreRunner

# Tenants whose view is kept; beyond, the oldest half is forgotten (read again on use).
MAX_TENANTS = 10_000
# Larger batches are planned in their transaction, on the store thread: a batch near the
# poll size means records were waiting, the event loop is the busiest thread, and sending a
# few ms sooner gains little. A smaller cap sent the batches after a stall the slow way.
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
        # Each tenant's view of its subscriptions, kept until one of them changes: this
        # instance's changes forget it at once, another's within a second (ChangeWatcher);
        # the ingest transaction decides in any case.
        self._matchers: dict[str, list[fan_out.Matcher]] = {}
        self._generation = 0  # changes at every invalidate: a read begun before is not kept
        # (tenant, event id) of the events planned ahead whose transaction has not ended: a
        # copy in a later batch (a producer's retry) is left to its own transaction, which
        # finds the first one stored, or the copy would be sent twice. Each key's future is
        # done once that transaction ended (or planning gave the event up): a later copy's
        # transaction waits for it, or on PostgreSQL (several store threads) it could
        # commit first, find nothing stored and leave the copy sent ahead unrecorded and
        # sent a second time. The future exists from the moment the key is planned, so a
        # batch that comes while the first is still being planned waits too.
        self._planning: dict[tuple[str, str], asyncio.Future[None]] = {}

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
        keys = {(e.tenant, e.id) for e in unseen}
        loop = asyncio.get_running_loop()
        planning.update((key, loop.create_future()) for key in keys)
        try:
            subscriptions = await self._subscriptions({event.tenant for event in unseen})
        except BaseException:
            self._release(keys)
            raise
        lease_until = unix_time(utcnow() + self._lease)
        planned = fan_out.plan_jobs(unseen, subscriptions, self._required_scopes(), lease_until)
        # Ordered deliveries wait for their turn in the store: none goes ahead.
        jobs = [job for job in planned.jobs if not job.ordering_key]
        # Events that no subscription takes send nothing ahead: nothing to keep apart.
        self._release(keys - {(j.tenant, j.event_id) for j in jobs})
        return jobs

    def earlier(self, events: Sequence[Event]) -> set["asyncio.Future[None]"]:
        """What a batch waits for before it is planned: the end of every transaction that
        copies of its events are (or are being planned to be) sent ahead of."""
        found = (self._planning.get((e.tenant, e.id)) for e in events)
        return {ending for ending in found if ending is not None}

    def ended(self, jobs: Sequence[Job]) -> None:
        """The transaction that `jobs` (from `plan`) were planned ahead of has ended."""
        self._release({(job.tenant, job.event_id) for job in jobs})

    def _release(self, keys: Iterable[tuple[str, str]]) -> None:
        for key in keys:
            ending = self._planning.pop(key, None)
            if ending is not None and not ending.done():
                ending.set_result(None)

    def may_order(self, tenants: Iterable[str]) -> bool:
        """Whether a subscription of these tenants may keep order: one does in the cached
        view, or a tenant's view is not cached to tell."""
        for tenant in tenants:
            matchers = self._matchers.get(tenant)
            if matchers is None or any(m.ordered for m in matchers):
                return True
        return False

    def invalidate(self, tenants: Iterable[str] | None = None) -> None:
        """Forgets the cached views of these tenants (every one: None): a subscription of
        theirs changed."""
        if tenants is None:
            self._matchers.clear()
        else:
            for tenant in tenants:
                self._matchers.pop(tenant, None)
        self._generation += 1

    async def _subscriptions(self, tenants: Iterable[str]) -> dict[str, list[fan_out.Matcher]]:
        out: dict[str, list[fan_out.Matcher]] = {}
        stale: list[str] = []
        for tenant in tenants:
            matchers = self._matchers.get(tenant)
            if matchers is None:
                stale.append(tenant)
            else:
                out[tenant] = matchers
        if stale:
            generation = self._generation
            loaded = await self._runner.read_first(self._store.matchers, stale)
            if len(self._matchers) + len(stale) > MAX_TENANTS:
                for old in list(self._matchers)[: len(self._matchers) // 2]:
                    del self._matchers[old]
            for tenant in stale:
                out[tenant] = loaded.get(tenant, [])
                if generation == self._generation:
                    self._matchers[tenant] = out[tenant]
        return out
