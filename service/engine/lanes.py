"""Per-endpoint lanes and the engine's capacity: how many jobs are queued or at endpoints,
how many results wait to be written, each endpoint's queue, concurrency slots, circuit
breaker, rate bucket and smoothed latency."""

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from service.domain.limits import (
    CircuitBreaker,
    TokenBucket,
    backlog_delays,
    crowding,
    lane_limit,
    smoothed,
)
from service.domain.pipeline import Job

# A lane holds about this many seconds of its endpoint's work in memory: a fixed count let
# a fast endpoint's lane overflow under load, and every overflowing job detoured through
# the store.
LANE_SECONDS = 2.0
# A tenant that submitted within this long counts as active when capacity is shared out.
ACTIVE_SECONDS = 30.0


@dataclass
class Lane:
    """One endpoint (subscription): its queue and its limits."""

    slots: asyncio.Semaphore
    breaker: CircuitBreaker
    queue: deque[Job] = field(default_factory=deque)
    bucket: TokenBucket | None = None
    task: asyncio.Task[None] | None = None
    sending: int = 0
    # Seconds per attempt, smoothed; None until the first one finished.
    latency: float | None = None
    # Set whenever a send of this lane finishes.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    # When (loop time) the jobs deferred for this lane so far are due: later ones after.
    backlog_until: float = 0.0

    def sent(self, seconds: float | None, succeeded: bool | None, now: float) -> None:
        """A send ended: with its time and whether it succeeded, or neither (no outcome)."""
        self.sending -= 1
        self.slots.release()
        self.finished.set()
        if seconds is not None:
            self.latency = smoothed(self.latency, seconds)
        if succeeded is not None:
            self.breaker.record(succeeded, now)

    def forgettable(self, now: float) -> bool:
        """Idle with nothing to remember (closed circuit, rate bucket refilled): forgotten
        sooner, the next send would start from a full bucket and exceed the rate."""
        refilling = self.bucket is not None and not self.bucket.full(now)
        return (
            not self.queue
            and not self.sending
            and not self.breaker.failures
            and not refilling
            and self.backlog_until <= now
        )

    def rate_wait(self, rate: int, now: float) -> float:
        """Seconds to wait before the next send at `rate` per second (0: no limit)."""
        if not rate:
            self.bucket = None
            return 0.0
        if self.bucket is None or self.bucket.rate != rate:
            self.bucket = TokenBucket(rate=rate, burst=max(1.0, rate / 10))
        return self.bucket.take(now)


class Lanes:
    """`hold` waits while `max_in_flight` jobs are queued or at endpoints, or while
    `max_unwritten` attempts' results wait to be written: backpressure to ingest. The two are
    apart so that a slow write does not take slots from requests. Capacity is shared fairly:
    while it is full, a tenant `crowding` the others has its further jobs deferred rather
    than waiting in line ahead of theirs."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        endpoint_concurrency: int,
        circuit_failures: int,
        circuit_cooldown: float,
        host_concurrency: int = 100,
        max_unwritten: int = 2000,
    ) -> None:
        self._max_in_flight = max_in_flight
        self._max_unwritten = max_unwritten
        self._unwritten = 0
        self._room = asyncio.Event()  # set while fewer than max_unwritten results wait
        self._room.set()
        self._host_concurrency = host_concurrency
        # Requests at endpoints per host (scheme, host, port), whatever subscriptions share it.
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._host_of: dict[str, str] = {}  # url -> its host key
        self._concurrency = endpoint_concurrency
        self._failures = circuit_failures
        self._cooldown = circuit_cooldown
        self._capacity = asyncio.Semaphore(max_in_flight)
        self._held = 0
        self._by_tenant: dict[str, int] = {}  # jobs held per tenant (none: absent)
        self._arriving: dict[str, int] = {}  # submits in progress per tenant
        self._seen: dict[str, float] = {}  # when each tenant last submitted (loop time)
        self._seen_pruned = 0.0
        self._lanes: dict[str, Lane] = {}

    @property
    def requests(self) -> int:
        """Requests at endpoints now (a lane is forgotten only when none is)."""
        return sum(lane.sending for lane in self._lanes.values())

    @property
    def held(self) -> int:
        """Jobs queued in lanes or being sent."""
        return self._held

    @property
    def unwritten(self) -> int:
        """Attempts' results waiting to be written."""
        return self._unwritten

    def host(self, url: str) -> asyncio.Semaphore:
        """The semaphore bounding requests to the URL's host."""
        key = self._host_of.get(url)
        if key is None:
            if len(self._host_of) >= 100_000:
                self._host_of.clear()
            parts = urlsplit(url)
            key = self._host_of[url] = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}"
        semaphore = self._hosts.get(key)
        if semaphore is None:
            semaphore = self._hosts[key] = asyncio.Semaphore(self._host_concurrency)
        return semaphore

    @property
    def free(self) -> int:
        """How many more jobs may be held without waiting."""
        room = self._max_unwritten - self._unwritten
        return max(0, min(self._max_in_flight - self._held, room))

    async def hold(self, tenant: str) -> None:
        while not self._room.is_set():
            await self._room.wait()
        await self._capacity.acquire()
        self._held += 1
        self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + 1

    def arriving(self, tenants: Iterable[str], change: int) -> None:
        """A submit with jobs of these tenants begins (+1) or ends (-1)."""
        now = asyncio.get_running_loop().time()
        for tenant in tenants:
            _add(self._arriving, tenant, change)
            self._seen[tenant] = now

    def crowding(self, tenant: str) -> bool:
        """Whether the tenant's next job should wait in the store (limits.crowding). Active
        are the tenants with jobs held or being submitted, or seen within ACTIVE_SECONDS: a
        tenant whose events wait in Kafka behind another's burst counts before they are read."""
        if self._held < self._max_in_flight:
            return False
        now = asyncio.get_running_loop().time()
        if now - self._seen_pruned > 1.0:
            self._seen_pruned = now
            self._seen = {t: seen for t, seen in self._seen.items() if now - seen < ACTIVE_SECONDS}
        active = len(self._by_tenant.keys() | self._arriving.keys() | self._seen.keys())
        return crowding(self._by_tenant.get(tenant, 0), self._max_in_flight, active)

    def backlog(self, lane: Lane, count: int, now: float) -> list[float]:
        """Seconds until each of `count` jobs the lane does not take now is due again."""
        rate = self._concurrency / max(lane.latency or 1.0, 0.001)
        delays, lane.backlog_until = backlog_delays(
            count, len(lane.queue) + lane.sending, rate, lane.backlog_until, now
        )
        return delays

    def answered(self, tenant: str) -> None:
        """A held job's attempt ended: its slot is free, its result waits to be written."""
        self.release(tenant)
        self._unwritten += 1
        if self._unwritten >= self._max_unwritten:
            self._room.clear()

    def written(self) -> None:
        """A result from `answered` was written (or dropped)."""
        self._unwritten -= 1
        if self._unwritten < self._max_unwritten:
            self._room.set()

    def release(self, tenant: str, count: int = 1) -> None:
        _add(self._by_tenant, tenant, -count)
        for _ in range(count):
            self._held -= 1
            self._capacity.release()

    def lane(self, subscription_id: str) -> Lane:
        lane = self._lanes.get(subscription_id)
        if lane is None:
            lane = Lane(
                slots=asyncio.Semaphore(self._concurrency),
                breaker=CircuitBreaker(self._failures, self._cooldown, self._cooldown * 10),
            )
            self._lanes[subscription_id] = lane
        return lane

    def limit(self, lane: Lane) -> int:
        """Jobs the lane may hold: about LANE_SECONDS of its endpoint's work."""
        first = max(50, self._concurrency * 10)  # before its latency is known
        return lane_limit(self._concurrency, lane.latency, LANE_SECONDS, first)

    def forget_if_idle(self, subscription_id: str, now: float) -> None:
        lane = self._lanes.get(subscription_id)
        if lane is not None and lane.task is None and lane.forgettable(now):
            del self._lanes[subscription_id]

    def take_all_queued(self) -> list[Job]:
        """Empties every queue and cancels the lanes' tasks (stop)."""
        queued = [job for lane in self._lanes.values() for job in lane.queue]
        for lane in self._lanes.values():
            lane.queue.clear()
            if lane.task is not None:
                lane.task.cancel()
        return queued


def _add(counts: dict[str, int], key: str, change: int) -> None:
    """Adds to a count that is left out of `counts` while zero."""
    value = counts.get(key, 0) + change
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)
