"""The engine's capacity: how many jobs are queued in lanes or at endpoints
(`max_in_flight`), how many attempts' results wait to be written (`max_unwritten`), and
who gets the next free slot."""

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from service.domain.limits import crowding
from service.domain.pipeline import Job

# A tenant that submitted within this long counts as active when capacity is shared out.
ACTIVE_SECONDS = 30.0
# Jobs parked at most, per max_in_flight slot: enough for a tenant's turn at its partitions
# (a fetch's worth of records) to wait in memory rather than detour through the store.
PARKED_PER_SLOT = 4


class Capacity:
    """`hold` waits while `max_in_flight` jobs are held or `max_unwritten` results wait to
    be written: backpressure to ingest. The two are apart so that a slow write does not take
    slots from requests.

    Capacity is shared fairly: a free slot goes to the waiting tenant that holds the fewest
    (max-min fairness), each tenant's waiters in their order. A tenant `crowding` the others
    out parks its jobs instead of waiting: they take their turn like a waiter but hold up no
    submit, so the events behind them are read meanwhile. `granted` gets each parked job
    when its slot comes."""

    def __init__(
        self, *, max_in_flight: int, max_unwritten: int, granted: Callable[[Job], None]
    ) -> None:
        self._max_in_flight = max_in_flight
        self._max_unwritten = max_unwritten
        self._granted = granted
        self._held = 0
        self._unwritten = 0
        self._by_tenant: dict[str, int] = {}  # jobs held per tenant (none: absent)
        # Per tenant, in order: parked jobs and held-up submits' futures.
        self._waiting: dict[str, deque[Job | asyncio.Future[None]]] = {}
        self._parked = 0
        self._arriving: dict[str, int] = {}  # submits in progress per tenant
        self._seen: dict[str, float] = {}  # when each tenant last submitted (loop time)
        self._seen_pruned = 0.0

    @property
    def held(self) -> int:
        """Jobs queued in lanes or being sent."""
        return self._held

    @property
    def unwritten(self) -> int:
        """Attempts' results waiting to be written."""
        return self._unwritten

    @property
    def parked(self) -> int:
        """Jobs waiting for a slot without holding up their submit."""
        return self._parked

    @property
    def free(self) -> int:
        """How many more jobs may be held without waiting."""
        if self._waiting:
            return 0
        room = self._max_unwritten - self._unwritten
        return max(0, min(self._max_in_flight - self._held, room))

    async def hold(self, tenant: str) -> None:
        """Takes a slot for one of the tenant's jobs, waiting for its turn."""
        if self.free:
            self._take(tenant)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(tenant)  # granted as it was cancelled
            raise

    def park(self, job: Job) -> bool:
        """Leaves the job to wait for its turn without waiting here; False when too many are
        parked already (it is left to the store instead)."""
        if self._parked >= PARKED_PER_SLOT * self._max_in_flight:
            return False
        self._waiting.setdefault(job.tenant, deque()).append(job)
        self._parked += 1
        return True

    def take_parked(self) -> list[Job]:
        """Removes and returns every parked job (stop)."""
        parked: list[Job] = []
        for tenant, queue in list(self._waiting.items()):
            parked += [entry for entry in queue if isinstance(entry, Job)]
            kept: deque[Job | asyncio.Future[None]] = deque(
                entry for entry in queue if not isinstance(entry, Job)
            )
            if kept:
                self._waiting[tenant] = kept
            else:
                del self._waiting[tenant]
        self._parked = 0
        return parked

    def arriving(self, tenants: Iterable[str], change: int) -> None:
        """A submit with jobs of these tenants begins (+1) or ends (-1)."""
        now = asyncio.get_running_loop().time()
        for tenant in tenants:
            _add(self._arriving, tenant, change)
            self._seen[tenant] = now

    def crowding(self, tenant: str) -> bool:
        """Whether the tenant's next job should wait aside (limits.crowding). Active are the
        tenants with jobs held, waiting or being submitted, or seen within ACTIVE_SECONDS: a
        tenant whose events wait in Kafka behind another's burst counts before they are read."""
        held = self._by_tenant.get(tenant, 0)
        # The cheap half of the rule first: most calls end here.
        if self._held < self._max_in_flight or 2 * held < self._max_in_flight:
            return False
        now = asyncio.get_running_loop().time()
        if now - self._seen_pruned > 1.0:
            self._seen_pruned = now
            self._seen = {t: seen for t, seen in self._seen.items() if now - seen < ACTIVE_SECONDS}
        active = len(
            self._by_tenant.keys()
            | self._waiting.keys()
            | self._arriving.keys()
            | self._seen.keys()
        )
        return crowding(held, self._max_in_flight, active)

    def answered(self, tenant: str) -> None:
        """A held job's attempt ended: its slot is free, its result waits to be written."""
        self._unwritten += 1
        self.release(tenant)

    def written(self) -> None:
        """A result from `answered` was written (or dropped)."""
        self._unwritten -= 1
        self._grant()

    def release(self, tenant: str, count: int = 1) -> None:
        """Frees `count` of the tenant's slots."""
        _add(self._by_tenant, tenant, -count)
        self._held -= count
        self._grant()

    def _take(self, tenant: str) -> None:
        self._held += 1
        self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + 1

    def _grant(self) -> None:
        """Hands free slots to the waiting tenants that hold the fewest."""
        while (
            self._waiting
            and self._held < self._max_in_flight
            and self._unwritten < self._max_unwritten
        ):
            by_tenant = self._by_tenant
            tenant = min(self._waiting, key=lambda t: by_tenant.get(t, 0))
            queue = self._waiting[tenant]
            entry = queue.popleft()
            if not queue:
                del self._waiting[tenant]
            if isinstance(entry, Job):
                self._parked -= 1
                self._take(tenant)
                self._granted(entry)
            elif not entry.done():  # a cancelled submit's is skipped
                self._take(tenant)
                entry.set_result(None)


def _add(counts: dict[str, int], key: str, change: int) -> None:
    """Adds to a count that is left out of `counts` while zero."""
    value = counts.get(key, 0) + change
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)
