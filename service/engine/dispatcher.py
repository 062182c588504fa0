"""The dispatcher: jobs in, through their endpoint's lane, to an attempt, then to the audit
publisher and the attempt writer. Each stage is a part of its own:

- `Capacity` (capacity.py): jobs held and results unwritten, shared fairly among tenants;
- `Lanes` (lanes.py): per-endpoint queues, concurrency, circuit breaker, rate, host bounds;
- `TargetCache` (targets.py): where and how each subscription is sent to;
- the attempt maker (attempts.py, or a DeliveryWorker beside the service);
- `AuditPublisher` (audit.py): audit records to the broker, or through the outbox;
- `AttemptWriter` (attempt_writer.py): attempts and outcomes stored in batches;
- `AheadLedger` (ahead_ledger.py): jobs sent ahead of their ingest transaction."""

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from service.domain.clock import utcnow
from service.domain.outcomes import AttemptResult, ErrorKind, Outcome
from service.domain.pipeline import Ingested, Job, RecordedAttempt, Target
from service.engine.ahead_ledger import AheadLedger
from service.engine.attempt_writer import AttemptWriter
from service.engine.audit import AuditPublisher, PublishAudit
from service.engine.capacity import Capacity
from service.engine.counters import DeliveryCounters
from service.engine.lanes import Lane, Lanes
from service.engine.targets import TargetCache
from service.errors import Unavailable
from service.metrics import Metrics
from service.store.attempts import AttemptStore
from service.store.runner import StoreRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryPolicy:
    """The delivery settings the dispatcher and scheduler apply."""

    endpoint_concurrency: int
    default_rate_limit: int
    circuit_failures: int
    circuit_cooldown: float
    max_in_flight: int
    attempt_timeout: float
    # How long a claimed delivery stays with this process before others may take it.
    lease: timedelta
    # Most requests at once to one host (scheme, name, port), however many subscriptions.
    host_concurrency: int = 100
    # Most attempts' results waiting to be written (bookkeeping, apart from max_in_flight).
    max_unwritten: int = 2000


class Attempts(Protocol):
    """Makes attempts: an AttemptMaker in this process, or a DeliveryWorker beside it."""

    async def make(self, job: Job, target: Target) -> RecordedAttempt: ...

    def attempt(self, job: Job, target: Target) -> "asyncio.Future[RecordedAttempt]": ...

    def skip(self, job: Job, target: Target, result: AttemptResult) -> RecordedAttempt: ...

    async def close(self) -> None: ...


class Dispatcher:
    """`submit` waits while max_in_flight jobs are queued or sent, or max_unwritten results
    wait to be written (backpressure to the consumer)."""

    def __init__(
        self,
        *,
        runner: StoreRunner,
        store: AttemptStore,
        attempts: Attempts,
        policy: DeliveryPolicy,
        after_write: Callable[[], None] = lambda: None,
        after_ordered_write: Callable[[], None] = lambda: None,
        publish_audit: PublishAudit | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._runner = runner
        self._store = store
        self._attempts = attempts
        self._policy = policy
        metrics = metrics or Metrics()
        self._counters = DeliveryCounters(metrics)
        self._lanes = Lanes(
            endpoint_concurrency=policy.endpoint_concurrency,
            circuit_failures=policy.circuit_failures,
            circuit_cooldown=policy.circuit_cooldown,
            host_concurrency=policy.host_concurrency,
        )
        self._capacity = Capacity(
            max_in_flight=policy.max_in_flight,
            max_unwritten=policy.max_unwritten,
            granted=self._enqueue,
        )
        metrics.requests_in_flight.set_function(lambda: self._lanes.requests)
        metrics.deliveries_held.set_function(lambda: self._capacity.held)
        metrics.results_unwritten.set_function(lambda: self._capacity.unwritten)
        metrics.deliveries_parked.set_function(lambda: self._capacity.parked)
        self._targets = TargetCache(runner, store)
        self._ledger = AheadLedger()
        self._writer = AttemptWriter(
            runner=runner,
            store=store,
            ledger=self._ledger,
            counters=self._counters,
            finished=self._written,
            after_outbox_write=after_write,
            after_ordered_write=after_ordered_write,
        )
        self._audit = AuditPublisher(publish_audit, self._writer)
        self._sending: set[asyncio.Future[RecordedAttempt]] = set()
        self._retrying: set[asyncio.Future[None]] = set()
        # Deliveries whose recorded attempt someone awaits (deliver_soon).
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._stopping = False

    @property
    def pending_results(self) -> int:
        """Attempt results not written yet (held ones included)."""
        return self._writer.pending

    @property
    def free(self) -> int:
        """How many more jobs `submit` takes without waiting."""
        return self._capacity.free

    async def start(self) -> None:
        self._writer.start()

    def invalidate(self, subscription_id: str) -> None:
        """Forgets a cached target after the subscription changed or was deleted."""
        self._targets.invalidate(subscription_id)

    async def submit(
        self, jobs: Sequence[Job], stored: "asyncio.Future[Ingested] | None" = None
    ) -> None:
        """Queues jobs in their endpoint's lane. Jobs of a tenant crowding others out
        (Capacity.crowding) are parked: they wait for their turn without holding up this
        submit. Deferred (left in the store until their lane can take them) are those beyond
        a lane's limit, and a crowding tenant's once too many are parked. With
        `stored`, the jobs were planned ahead of the ingest transaction it ends with
        (AheadPlanner): they are sent at once, but nothing of them is written before it
        ended, and nothing of those it did not store."""
        if self._stopping:
            return  # leased in the store: sent after the restart
        if stored is not None:
            self._ledger.track(stored, jobs)
        await self._targets.load({job.subscription_id for job in jobs})
        lanes, capacity = self._lanes, self._capacity
        tenants = {job.tenant for job in jobs}
        capacity.arriving(tenants, +1)
        later: dict[str, list[Job]] = {}  # jobs left to the store, per subscription
        crowded = 0
        try:
            for job in jobs:
                lane = lanes.lane(job.subscription_id)
                # Checked before waiting for capacity: a job its lane cannot take, or of a
                # tenant crowding others out, must not hold up the jobs behind it.
                full = len(lane.queue) >= lanes.limit(lane)
                aside = not full and capacity.crowding(job.tenant)
                if aside and capacity.park(job):
                    continue
                if full or aside:
                    later.setdefault(job.subscription_id, []).append(job)
                    crowded += aside
                    continue
                await capacity.hold(job.tenant)
                self._enqueue(job)
        finally:
            capacity.arriving(tenants, -1)
        if later:
            deferred = sum(len(held) for held in later.values())
            self._counters.deferred("endpoint_backlog", deferred - crowded)
            self._counters.deferred("tenant_share", crowded)
            await self._defer_backlog(later)

    def _enqueue(self, job: Job) -> None:
        """Queues a job that holds its slot in its endpoint's lane."""
        lane = self._lanes.lane(job.subscription_id)
        lane.queue.append(job)
        if lane.task is None:
            lane.task = asyncio.create_task(self._drain(job.subscription_id, lane))

    async def deliver_soon(self, job: Job, wait: float) -> None:
        """Queues one job under its endpoint's limits like any other and waits up to `wait`
        seconds for its attempt to be recorded (SendTestEvent)."""
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[job.delivery_id] = recorded
        try:
            await self.submit([job])
            await asyncio.wait_for(recorded, wait)
        except TimeoutError:
            pass
        finally:
            self._waiting.pop(job.delivery_id, None)

    async def stop(self, grace: float) -> None:
        """Stops taking jobs, hands queued ones back to the store (due now), lets in-flight
        attempts finish for up to `grace` seconds, writes every result and closes the
        attempt maker."""
        self._stopping = True
        self._audit.close()  # attempts finishing now are stored with their outbox rows
        queued = self._capacity.take_parked() + self._lanes.take_all_queued()
        if queued:
            await self._defer({0.0: queued})
        if self._sending or self._retrying:
            await asyncio.wait(self._sending | self._retrying, timeout=grace)
        for task in self._sending:
            task.cancel()
        await self._audit.stop()
        await self._writer.stop(grace)
        await self._attempts.close()

    async def _drain(self, subscription_id: str, lane: Lane) -> None:
        """Sends the lane's jobs in order, within its limits, until it is empty."""
        loop = asyncio.get_running_loop()
        lanes = self._lanes
        try:
            while lane.queue and not self._stopping:
                excess = len(lane.queue) - lanes.limit(lane)
                if excess > 0:
                    # Its endpoint slowed down: what it cannot send soon waits in the store.
                    shed = [lane.queue.pop() for _ in range(excess)][::-1]
                    self._counters.deferred("endpoint_backlog", excess)
                    await self._handed_back(shed)
                    continue
                job = lane.queue[0]
                known, target = self._targets.cached(subscription_id)
                if not known:
                    target = (await self._targets.load({subscription_id}))[subscription_id]
                if target is None or not target.enabled:
                    lane.queue.popleft()
                    if target is not None and not await self._ledger.unstored([job.delivery_id]):
                        # Disabled: FAILED until RecoverDeliveries.
                        await self._runner.call(self._store.fail_disabled, [job.delivery_id])
                    self._capacity.release(job.tenant)
                    continue
                await lane.slots.acquire()
                if lane.breaker.serial and lane.sending:
                    lane.slots.release()
                    lane.finished.clear()
                    await lane.finished.wait()
                    continue
                now = loop.time()
                if not lane.breaker.allow(now):
                    # The circuit is open: each due job is an attempt made without a request,
                    # so its delivery moves along the retry schedule and ends FAILED when it
                    # runs out, as if the endpoint had been called and failed.
                    lane.slots.release()
                    while lane.queue:
                        self._skip(lane.queue.popleft(), target)
                    continue
                rate = target.rate_limit_per_second or self._policy.default_rate_limit
                wait = lane.rate_wait(rate, now)
                if wait > 0:
                    await asyncio.sleep(wait)
                if job.lease_until - time.time() < self._policy.attempt_timeout:
                    # The claim could run out mid-attempt and another instance send it too:
                    # leave it to whichever scheduler claims it next.
                    lane.queue.popleft()
                    lane.slots.release()
                    self._capacity.release(job.tenant)
                    log.info("claim expired before sending", extra={"delivery_id": job.delivery_id})
                    continue
                host = lanes.host(target.url)
                await host.acquire()  # at once unless the host has all it may take
                lane.sending += 1
                lane.queue.popleft()
                # A callback, not a task per send: thousands a second.
                made = self._attempts.attempt(job, target)
                self._sending.add(made)
                made.add_done_callback(functools.partial(self._sent, job, lane, host))
        except Exception:
            log.exception("lane failed", extra={"subscription_id": subscription_id})
        finally:
            lane.task = None
            lanes.forget_if_idle(subscription_id, loop.time())

    def _sent(
        self,
        job: Job,
        lane: Lane,
        host: asyncio.Semaphore,
        made: "asyncio.Future[RecordedAttempt]",
    ) -> None:
        host.release()
        self._sending.discard(made)
        now = asyncio.get_running_loop().time()
        if made.cancelled():
            lane.sent(None, None, now)
            return  # stopping: the delivery stays leased and is sent after the restart
        error = made.exception()
        if error is not None:
            lane.sent(None, None, now)
            # No outcome (say the delivery worker died): due again in a second, sent by
            # whoever claims it then; the lease covers it if this write fails too.
            log.error(
                "attempt failed unexpectedly",
                extra={"delivery_id": job.delivery_id},
                exc_info=error,
            )
            retry = asyncio.ensure_future(self._retry_soon(job))
            self._retrying.add(retry)
            retry.add_done_callback(self._retrying.discard)
            return
        recorded = made.result()
        attempt = recorded.attempt
        lane.sent(attempt.latency_ms / 1000, attempt.outcome == Outcome.SUCCEEDED, now)
        self._finished(job, recorded)

    def _skip(self, job: Job, target: Target) -> None:
        skipped = AttemptResult(
            error_kind=ErrorKind.CIRCUIT_OPEN,
            error_message="the endpoint's circuit is open after repeated failures; no request",
        )
        self._finished(job, self._attempts.skip(job, target, skipped))

    def _finished(self, job: Job, recorded: RecordedAttempt) -> None:
        """Counts the attempt, applies what it decided and hands it to be audited and
        stored: its slot is free now, its result counts as unwritten until written."""
        self._capacity.answered(job.tenant)
        now = utcnow()
        self._counters.attempt(job, recorded.attempt, now)
        if not job.test:
            succeeded = recorded.attempt.outcome == Outcome.SUCCEEDED
            self._targets.attempted(job.subscription_id, succeeded, now)
        if recorded.disable is not None:
            self.invalidate(job.subscription_id)
            log.warning(
                "subscription disabled",
                extra={"subscription_id": job.subscription_id, "reason": recorded.disable.name},
            )
        self._audit.add(recorded)

    def _written(self, recorded: RecordedAttempt) -> None:
        """The attempt was stored (or dropped: its job was sent ahead and not stored)."""
        self._capacity.written()
        waiter = self._waiting.get(recorded.attempt.delivery_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _retry_soon(self, job: Job) -> None:
        with contextlib.suppress(Unavailable):
            await self._defer({1.0: [job]})
        self._capacity.release(job.tenant)

    async def _handed_back(self, jobs: Sequence[Job]) -> None:
        """Defers held jobs of one lane and frees their capacity, even when the store is away
        (they stay leased there, and the scheduler sends them once the lease ends)."""
        try:
            await self._defer_backlog({jobs[0].subscription_id: list(jobs)})
        finally:
            self._capacity.release(jobs[0].tenant, len(jobs))

    async def _defer_backlog(self, later: dict[str, list[Job]]) -> None:
        """Defers each subscription's jobs, in order, to when its lane can take them."""
        now = asyncio.get_running_loop().time()
        due: dict[float, list[Job]] = {}
        for subscription_id, jobs in later.items():
            delays = self._lanes.backlog(self._lanes.lane(subscription_id), len(jobs), now)
            for job, seconds in zip(jobs, delays, strict=True):
                # Tenths of a second: a few statements per batch, not one per job.
                due.setdefault(math.ceil(seconds * 10) / 10, []).append(job)
        await self._defer(due)

    async def _defer(self, due: dict[float, list[Job]]) -> None:
        """Makes the jobs due again after the seconds they are listed under."""
        now = utcnow()
        ids = [job.delivery_id for jobs in due.values() for job in jobs]
        missing = await self._ledger.unstored(ids)
        groups = {
            now + timedelta(seconds=seconds): kept
            for seconds, jobs in due.items()
            if (kept := [job.delivery_id for job in jobs if job.delivery_id not in missing])
        }
        if groups:
            await self._runner.call(self._store.defer, groups)
