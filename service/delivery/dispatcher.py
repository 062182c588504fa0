"""Sends jobs through per-endpoint lanes (concurrency, rate limit, circuit breaker) with
bounded memory, and writes each attempt, its outcome and its audit record in batches."""

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from service.domain.clock import utcnow
from service.domain.deliveries import AttemptRecord, Job, Target
from service.domain.limits import CircuitBreaker, TokenBucket, lane_limit, smoothed
from service.domain.outcomes import Outcome
from service.errors import Unavailable
from service.metrics import Metrics, status_class
from service.store.deliveries import DeliveryStore, Ingested, RecordedAttempt
from service.store.runner import StoreRunner

log = logging.getLogger(__name__)
# How long a cached subscription target is trusted before it is read again.
TARGET_TTL_SECONDS = 2.0
# Results are written in one transaction per batch, at most this many at once: larger
# batches hold the GIL on the store thread long enough to delay every HTTP answer (make bench).
WRITE_BATCH = 100
# A lane holds about this many seconds of its endpoint's work in memory. With a fixed count
# instead, a fast endpoint's lane overflowed under load and every overflowing job took a
# detour through the store and back a second later (make bench: 3,400-3,800 deliveries/s
# against 4,900/s).
LANE_SECONDS = 2.0
# How long a batch's audit records may wait for the broker's ack before they go through the
# outbox instead, and how long after a miss every batch goes through the outbox.
AUDIT_WAIT_SECONDS = 1.0
AUDIT_PAUSE_SECONDS = 5.0
# Audit records finished within this long go to the broker together: gathered for 2 ms,
# the many small sends cost the service more CPU than the outbox rows they spared, gathered
# for 20-50 ms, 80-84 against 88-89 us per delivery (make bench).
AUDIT_GATHER_SECONDS = 0.05
# How many ids of jobs sent ahead but not stored are remembered until their attempt ends;
# the oldest go first (such jobs are rare, and a job dropped unsent never comes back).
NOT_STORED_REMEMBERED = 100_000
# Publishes audit records and returns once the broker acked every one; raises Unavailable.
PublishAudit = Callable[[Sequence[RecordedAttempt]], Awaitable[None]]


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

    @property
    def first_lane_limit(self) -> int:
        """Jobs one endpoint may hold in memory before its latency is known."""
        return max(50, self.endpoint_concurrency * 10)


@dataclass
class _Lane:
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


def _forgettable(lane: _Lane, now: float) -> bool:
    """An idle lane with nothing to remember (closed circuit, its rate bucket refilled) can
    go: forgotten sooner, the next send would start from a full bucket and exceed the rate."""
    refilling = lane.bucket is not None and not lane.bucket.full(now)
    return not lane.queue and not lane.sending and not lane.breaker.failures and not refilling


class Attempts(Protocol):
    """Makes attempts: an AttemptMaker in this process, or a DeliveryWorker beside it."""

    async def make(self, job: Job, target: Target) -> RecordedAttempt: ...

    def attempt(self, job: Job, target: Target) -> "asyncio.Future[RecordedAttempt]": ...

    async def close(self) -> None: ...


class Dispatcher:
    """`submit` waits while max_in_flight jobs are held (backpressure to the consumer)."""

    def __init__(
        self,
        *,
        runner: StoreRunner,
        store: DeliveryStore,
        attempts: Attempts,
        policy: DeliveryPolicy,
        after_write: Callable[[], None] = lambda: None,
        publish_audit: PublishAudit | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._runner = runner
        self._publish_audit = publish_audit
        self._audit_direct_after = 0.0  # loop time before which audits use the outbox
        self._unpublished: list[RecordedAttempt] = []
        self._publishing: set[asyncio.Future[None]] = set()
        self._audited: set[str] = set()  # attempt ids whose audit record the broker acked
        self._store = store
        self._attempts = attempts
        self._policy = policy
        self._after_write = after_write
        self._metrics = metrics or Metrics()
        self._capacity = asyncio.Semaphore(policy.max_in_flight)
        self._held = 0
        self._lanes: dict[str, _Lane] = {}
        self._targets: dict[str, tuple[float, Target | None]] = {}
        self._results: list[RecordedAttempt] = []
        self._results_ready = asyncio.Event()
        self._sending: set[asyncio.Future[RecordedAttempt]] = set()
        self._writer: asyncio.Task[None] | None = None
        self._retrying: set[asyncio.Future[None]] = set()
        self._stopping = False
        # Ingest transactions whose jobs were submitted ahead of them, with those jobs' ids,
        # and the ids of such jobs that their transaction did not store.
        self._storing: dict[asyncio.Future[Ingested], list[str]] = {}
        self._not_stored: OrderedDict[str, None] = OrderedDict()
        # Deliveries whose recorded attempt someone awaits (deliver_soon).
        self._waiting: dict[str, asyncio.Future[None]] = {}
        # Metric children by (metric, labels): labels() costs more than the increment.
        self._children: dict[tuple[Any, ...], Any] = {}

    @property
    def free(self) -> int:
        """How many more jobs `submit` takes without waiting."""
        return max(0, self._policy.max_in_flight - self._held)

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="attempt-writer")

    def invalidate(self, subscription_id: str) -> None:
        """Forgets a cached target after the subscription changed or was deleted."""
        self._targets.pop(subscription_id, None)

    async def submit(
        self, jobs: Sequence[Job], stored: "asyncio.Future[Ingested] | None" = None
    ) -> None:
        """Queues jobs in their endpoint's lane; jobs beyond a lane's limit are deferred.
        With `stored`, the jobs were planned ahead of the ingest transaction it ends with
        (AheadPlanner): they are sent at once, but nothing of them is written before it
        ended, and nothing of those it did not store."""
        if self._stopping:
            return  # leased in the store: sent after the restart
        if stored is not None and jobs:
            self._storing[stored] = [job.delivery_id for job in jobs]
            stored.add_done_callback(self._ingest_ended)
        await self._load_targets({job.subscription_id for job in jobs})
        deferred: list[Job] = []
        for job in jobs:
            await self._capacity.acquire()
            self._held += 1
            lane = self._lane(job.subscription_id)
            if len(lane.queue) >= self._lane_limit(lane):
                deferred.append(job)
                self._release()
                continue
            lane.queue.append(job)
            if lane.task is None:
                lane.task = asyncio.create_task(self._drain(job.subscription_id, lane))
        if deferred:
            self._child(self._metrics.deliveries_deferred, "endpoint_backlog").inc(len(deferred))
            await self._defer(deferred, seconds=1.0)

    async def deliver_soon(self, job: Job, wait: float) -> None:
        """Queues one job in its endpoint's lane, under its rate limit, concurrency limit and
        circuit breaker like any other, and waits up to `wait` seconds for its attempt to be
        recorded (SendTestEvent); a job held back by those limits is sent when they allow."""
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
        attempts finish for up to `grace` seconds and writes every result."""
        self._stopping = True
        queued = [job for lane in self._lanes.values() for job in lane.queue]
        for lane in self._lanes.values():
            lane.queue.clear()
            if lane.task is not None:
                lane.task.cancel()
        if queued:
            await self._defer(queued, seconds=0.0)
        if self._sending or self._retrying:
            await asyncio.wait(self._sending | self._retrying, timeout=grace)
        for task in self._sending:
            task.cancel()
        self._publish_gathered()
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=AUDIT_WAIT_SECONDS + 1)
        if self._writer is not None:
            # Never cancel a write in progress: its store call would still commit, and the
            # last flush below would write the same attempts again.
            self._results_ready.set()
            await asyncio.wait({self._writer}, timeout=max(grace, 5.0))
            if not self._writer.done():
                self._writer.cancel()
                log.warning(
                    "attempt results not written; those attempts are made again after restart",
                    extra={"pending": len(self._results)},
                )
                await self._attempts.close()
                return
        await self._flush(tries=5)
        await self._attempts.close()

    # -- lanes --------------------------------------------------------------------

    def _lane_limit(self, lane: _Lane) -> int:
        policy = self._policy
        return lane_limit(
            policy.endpoint_concurrency, lane.latency, LANE_SECONDS, policy.first_lane_limit
        )

    def _lane(self, subscription_id: str) -> _Lane:
        lane = self._lanes.get(subscription_id)
        if lane is None:
            policy = self._policy
            lane = _Lane(
                slots=asyncio.Semaphore(policy.endpoint_concurrency),
                breaker=CircuitBreaker(
                    policy.circuit_failures, policy.circuit_cooldown, policy.circuit_cooldown * 10
                ),
            )
            self._lanes[subscription_id] = lane
        return lane

    async def _drain(self, subscription_id: str, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.queue and not self._stopping:
                excess = len(lane.queue) - self._lane_limit(lane)
                if excess > 0:
                    # Its endpoint slowed down: what it cannot send soon waits in the store.
                    shed = [lane.queue.pop() for _ in range(excess)]
                    self._child(self._metrics.deliveries_deferred, "endpoint_backlog").inc(excess)
                    await self._handed_back(shed, seconds=1.0)
                    continue
                job = lane.queue[0]
                target = (await self._load_targets({subscription_id})).get(subscription_id)
                if target is None or not target.enabled:
                    lane.queue.popleft()
                    if target is not None and not await self._unstored([job.delivery_id]):
                        # Disabled: FAILED until RecoverDeliveries.
                        await self._runner.call(self._store.fail_disabled, [job.delivery_id])
                    self._release()
                    continue
                await lane.slots.acquire()
                if lane.breaker.failures and lane.sending:
                    # After a failure, one request at a time until one succeeds: a dead
                    # endpoint costs one attempt per wave, not a full concurrent batch.
                    lane.slots.release()
                    lane.finished.clear()
                    await lane.finished.wait()
                    continue
                now = loop.time()
                if not lane.breaker.allow(now):
                    lane.slots.release()
                    jobs = list(lane.queue)
                    lane.queue.clear()
                    self._child(self._metrics.deliveries_deferred, "circuit_open").inc(len(jobs))
                    await self._handed_back(jobs, seconds=max(1.0, lane.breaker.retry_at() - now))
                    continue
                wait = self._rate_wait(lane, target, now)
                if wait > 0:
                    await asyncio.sleep(wait)
                if job.lease_until - time.time() < self._policy.attempt_timeout:
                    # The claim could run out mid-attempt and another instance send it too:
                    # leave it to whichever scheduler claims it next.
                    lane.queue.popleft()
                    lane.slots.release()
                    self._release()
                    log.info("claim expired before sending", extra={"delivery_id": job.delivery_id})
                    continue
                lane.sending += 1
                lane.queue.popleft()
                # A callback, not a task per send: thousands a second (make bench).
                made = self._attempts.attempt(job, target)
                self._sending.add(made)
                made.add_done_callback(functools.partial(self._sent, job, lane))
        except Exception:
            log.exception("lane failed", extra={"subscription_id": subscription_id})
        finally:
            lane.task = None
            if _forgettable(lane, loop.time()):
                self._lanes.pop(subscription_id, None)

    def _rate_wait(self, lane: _Lane, target: Target, now: float) -> float:
        rate = target.rate_limit_per_second or self._policy.default_rate_limit
        if not rate:
            lane.bucket = None
            return 0.0
        if lane.bucket is None or lane.bucket.rate != rate:
            lane.bucket = TokenBucket(rate=rate, burst=max(1.0, rate / 10))
        return lane.bucket.take(now)

    def _sent(self, job: Job, lane: _Lane, made: "asyncio.Future[RecordedAttempt]") -> None:
        self._sending.discard(made)
        lane.sending -= 1
        lane.slots.release()
        lane.finished.set()
        if made.cancelled():
            return  # stopping: the delivery stays leased and is sent after the restart
        error = made.exception()
        if error is not None:
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
        lane.latency = smoothed(lane.latency, recorded.attempt.latency_ms / 1000)
        self._noted(job, recorded)
        lane.breaker.record(
            recorded.attempt.outcome == Outcome.SUCCEEDED, asyncio.get_running_loop().time()
        )
        self._audit(recorded)

    def _audit(self, recorded: RecordedAttempt) -> None:
        """Sends the attempt's audit record to the broker first, with the others finished
        just now; the attempt is stored once the broker acked it (or could not). An acked
        record needs no outbox row, nor its read and delete (make bench). While the broker
        is away or slow, the store queues the records in the outbox, as it does for every
        attempt without a broker. A record acked but never stored (a crash just then) is
        an attempt that was made: its delivery is attempted again, and audited again."""
        loop = asyncio.get_running_loop()
        if self._publish_audit is None or self._stopping or loop.time() < self._audit_direct_after:
            self._results.append(recorded)
            self._results_ready.set()
            return
        if not self._unpublished:
            loop.call_later(AUDIT_GATHER_SECONDS, self._publish_gathered)
        self._unpublished.append(recorded)

    def _publish_gathered(self) -> None:
        batch, self._unpublished = self._unpublished, []
        if batch:
            publishing = asyncio.ensure_future(self._published(batch))
            self._publishing.add(publishing)
            publishing.add_done_callback(self._publishing.discard)

    async def _published(self, batch: list[RecordedAttempt]) -> None:
        assert self._publish_audit is not None
        try:
            await asyncio.wait_for(self._publish_audit(batch), AUDIT_WAIT_SECONDS)
            self._audited.update(r.attempt.attempt_id for r in batch)
        except (Unavailable, TimeoutError) as exc:
            # Records still in flight may be acked later and sent again from the outbox:
            # consumers see each attempt at least once, by its attempt id.
            log.warning("audit records go through the outbox", extra={"error": type(exc).__name__})
            self._audit_direct_after = asyncio.get_running_loop().time() + AUDIT_PAUSE_SECONDS
        except Exception:
            log.exception("audit records not published; they go through the outbox")
        finally:
            self._results.extend(batch)
            self._results_ready.set()

    async def _retry_soon(self, job: Job) -> None:
        with contextlib.suppress(Unavailable):
            await self._defer([job], seconds=1.0)
        self._release()

    # -- attempts -------------------------------------------------------------------

    def _noted(self, job: Job, recorded: RecordedAttempt) -> None:
        """Counts the attempt; forgets the target of a subscription it disabled."""
        self._count(job, recorded.attempt, utcnow())
        if recorded.disable is not None:
            self.invalidate(job.subscription_id)
            log.warning(
                "subscription disabled",
                extra={"subscription_id": job.subscription_id, "reason": recorded.disable.name},
            )

    def _count(self, job: Job, record: AttemptRecord, now: datetime) -> None:
        metrics = self._metrics
        outcome = record.outcome.name.lower()
        self._child(metrics.attempts, outcome, status_class(record.http_status)).inc()
        metrics.attempt_seconds.observe(record.latency_ms / 1000)
        if record.outcome != Outcome.RETRY_SCHEDULED and not job.test:
            self._child(metrics.deliveries_finished, outcome).inc()
        if record.outcome == Outcome.SUCCEEDED and job.event_time is not None and not job.test:
            metrics.event_to_delivery_seconds.observe(
                max(0.0, (now - job.event_time).total_seconds())
            )
        # Failures at INFO for the operator; successes only at DEBUG (thousands a second).
        level = logging.DEBUG if record.outcome == Outcome.SUCCEEDED else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "delivery attempt " + outcome,
                extra={
                    "delivery_id": record.delivery_id,
                    "subscription_id": record.subscription_id,
                    "event_id": record.event_id,
                    "event_type": record.event_type,
                    "attempt": record.attempt_number,
                    "http_status": record.http_status,
                    "error_kind": record.error_kind.name,
                    "latency_ms": record.latency_ms,
                },
            )

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- store --------------------------------------------------------------------

    async def _load_targets(self, ids: set[str], force: bool = False) -> dict[str, Target | None]:
        now = time.monotonic()
        stale = {
            i
            for i in ids
            if force or now - self._targets.get(i, (-1e9, None))[0] > TARGET_TTL_SECONDS
        }
        if stale:
            loaded = await self._runner.call(self._store.targets, stale)
            for subscription_id in stale:
                self._targets[subscription_id] = (now, loaded.get(subscription_id))
        return {i: self._targets[i][1] for i in ids}

    async def _handed_back(self, jobs: Sequence[Job], seconds: float) -> None:
        """Defers held jobs and frees their capacity, even when the store is away (they stay
        leased there, and the scheduler sends them once the lease ends)."""
        try:
            await self._defer(jobs, seconds)
        finally:
            for _ in jobs:
                self._release()

    async def _defer(self, jobs: Sequence[Job], seconds: float) -> None:
        until = utcnow() + timedelta(seconds=seconds)
        ids = [job.delivery_id for job in jobs]
        missing = await self._unstored(ids)
        ids = [i for i in ids if i not in missing]
        if ids:
            await self._runner.call(self._store.defer, ids, until)

    def _ingest_ended(self, stored: "asyncio.Future[Ingested]") -> None:
        ids = self._storing.pop(stored, None)
        if ids is None:
            return
        missing: Sequence[str] = ids
        if not stored.cancelled() and stored.exception() is None:
            missing = list(stored.result().not_stored)
        for delivery_id in missing:
            self._not_stored[delivery_id] = None
        while len(self._not_stored) > NOT_STORED_REMEMBERED:
            self._not_stored.popitem(last=False)

    async def _unstored(self, delivery_ids: Iterable[str]) -> set[str]:
        """Those of the deliveries whose jobs were sent ahead of an ingest transaction that
        did not store them (forgotten here from now on), once every transaction that jobs
        were sent ahead of has ended: nothing may be written of them."""
        if self._storing:
            ending = list(self._storing)
            await asyncio.wait(ending)
            for stored in ending:
                self._ingest_ended(stored)
        if not self._not_stored:
            return set()
        missing = {i for i in delivery_ids if i in self._not_stored}
        for delivery_id in missing:
            del self._not_stored[delivery_id]
        return missing

    async def _write_loop(self) -> None:
        """Runs until stop(): then it finishes the write it is in and returns."""
        while not self._stopping:
            await self._results_ready.wait()
            if self._stopping:
                return
            await asyncio.sleep(0.002)  # let a burst of results gather into one transaction
            await self._flush()

    async def _flush(self, tries: int | None = None) -> None:
        """Writes every pending result; while the database is down it keeps retrying
        (`tries` bounds that at shutdown: unwritten attempts are then simply made again)."""
        while self._results:
            batch = await self._recordable(self._results[:WRITE_BATCH])
            if not batch:
                continue
            audited = {r.attempt.attempt_id for r in batch} & self._audited
            try:
                await self._runner.call(self._store.record_attempts, batch, audited=audited)
            except Exception as exc:
                if isinstance(exc, Unavailable):
                    log.warning(
                        "attempts not recorded yet; retrying",
                        extra={"pending": len(self._results)},
                    )
                else:
                    # A bug, not an outage: retried (and logged each time) rather than let
                    # the writer end, which stopped every later attempt being recorded.
                    log.exception(
                        "attempts not recorded; retrying", extra={"pending": len(self._results)}
                    )
                if tries is not None:
                    tries -= 1
                    if tries <= 0:
                        return
                elif self._stopping:
                    return  # stop() makes the last tries
                await asyncio.sleep(1.0)
                continue
            del self._results[: len(batch)]
            for done in batch:
                self._release()
                waiter = self._waiting.get(done.attempt.delivery_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            self._audited -= audited
            self._child(self._metrics.audit_records, "direct").inc(len(audited))
            if len(audited) < len(batch):
                self._child(self._metrics.audit_records, "outbox").inc(len(batch) - len(audited))
                self._after_write()
        self._results_ready.clear()

    async def _recordable(self, batch: list[RecordedAttempt]) -> list[RecordedAttempt]:
        """The batch without the attempts of jobs sent ahead and not stored, which leave the
        pending results here: made (and audited, if that went out directly) but never
        recorded, as there is no delivery to record them in."""
        missing = await self._unstored(r.attempt.delivery_id for r in batch)
        if not missing:
            return batch
        for lost in [r for r in batch if r.attempt.delivery_id in missing]:
            self._results.remove(lost)
            self._audited.discard(lost.attempt.attempt_id)
            self._release()
        self._metrics.attempts_unrecorded.inc(len(missing))
        return [r for r in batch if r.attempt.delivery_id not in missing]

    def _release(self) -> None:
        self._held -= 1
        self._capacity.release()
