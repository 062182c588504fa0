"""Per-endpoint lanes: each endpoint's queue, concurrency slots, circuit breaker, rate
bucket and smoothed latency; and per-host bounds on requests at once."""

import asyncio
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from service.domain.limits import (
    CircuitBreaker,
    TokenBucket,
    backlog_delays,
    lane_limit,
    smoothed,
)
from service.domain.pipeline import Job

# A lane holds about this many seconds of its endpoint's work in memory: a fixed count let
# a fast endpoint's lane overflow under load, and every overflowing job detoured through
# the store.
LANE_SECONDS = 2.0


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
    """Each endpoint's lane, and each host's bound on requests at once however many
    subscriptions share it."""

    def __init__(
        self,
        *,
        endpoint_concurrency: int,
        circuit_failures: int,
        circuit_cooldown: float,
        host_concurrency: int = 100,
    ) -> None:
        self._host_concurrency = host_concurrency
        # Requests at endpoints per host (scheme, host, port), whatever subscriptions share it.
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._host_of: dict[str, str] = {}  # url -> its host key
        self._concurrency = endpoint_concurrency
        self._failures = circuit_failures
        self._cooldown = circuit_cooldown
        self._lanes: dict[str, Lane] = {}

    @property
    def requests(self) -> int:
        """Requests at endpoints now (a lane is forgotten only when none is)."""
        return sum(lane.sending for lane in self._lanes.values())

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

    def backlog(self, lane: Lane, count: int, now: float) -> list[float]:
        """Seconds until each of `count` jobs the lane does not take now is due again."""
        rate = self._concurrency / max(lane.latency or 1.0, 0.001)
        delays, lane.backlog_until = backlog_delays(
            count, len(lane.queue) + lane.sending, rate, lane.backlog_until, now
        )
        return delays

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
