"""Writes finished attempts, their outcomes and (unless the broker acked them) their audit
records' outbox rows, in batches of one transaction each; and their subscriptions' updates,
coalesced (CoalescedMarks)."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection

from service.domain.clock import utcnow
from service.domain.pipeline import RecordedAttempt
from service.domain.subscription_marks import COALESCE_SECONDS, Mark
from service.engine.ahead_ledger import AheadLedger
from service.engine.coalesced_marks import CoalescedMarks
from service.engine.counters import DeliveryCounters
from service.errors import Unavailable
from service.logs import Outage
from service.store.attempts import AttemptStore
from service.store.runner import StoreRunner

log = logging.getLogger(__name__)
# At most this many results per transaction: a larger batch holds the GIL on the store
# thread long enough to delay every HTTP answer.
WRITE_BATCH = 100
# The results of jobs sent ahead of an ingest transaction that failed wait this long for
# their deliveries (stored when the records are read again), looked for this often.
HOLD_SECONDS = 600.0
HOLD_CHECK_SECONDS = 0.5
GATHER_SECONDS = 0.002
TRICKLE_SECONDS = 0.01


class AttemptWriter:
    """`add` queues results; a loop writes them. `finished` is called once per result, when
    it was written or dropped (its job was sent ahead and not stored)."""

    def __init__(
        self,
        *,
        runner: StoreRunner,
        store: AttemptStore,
        ledger: AheadLedger,
        counters: DeliveryCounters,
        finished: Callable[[RecordedAttempt], None],
        after_outbox_write: Callable[[], None],
        after_ordered_write: Callable[[], None] = lambda: None,
    ) -> None:
        self._runner = runner
        self._store = store
        self._ledger = ledger
        self._counters = counters
        self._finished = finished
        self._after_outbox_write = after_outbox_write
        self._after_ordered_write = after_ordered_write
        self._results: list[RecordedAttempt] = []
        self._audited: set[str] = set()  # attempt ids whose audit record the broker acked
        # Results waiting for their delivery to be stored, with when they give up; they
        # were `finished` when put here (their capacity is not held meanwhile).
        self._held: list[tuple[float, RecordedAttempt]] = []
        self._released: set[str] = set()  # attempt ids `finished` already
        self._ready = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        self._outage = Outage(log, "attempts not recorded yet; retrying")
        self._marks = CoalescedMarks()

    @property
    def pending(self) -> int:
        return len(self._results) + len(self._held)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._write_loop(), name="attempt-writer")

    def add(self, results: Collection[RecordedAttempt], *, audited: bool = False) -> None:
        """Queues results; `audited`: the broker acked their audit records already."""
        self._results.extend(results)
        if audited:
            self._audited.update(r.attempt.attempt_id for r in results)
        self._ready.set()

    async def stop(self, grace: float) -> None:
        """Finishes the write in progress (never cancelled: its store call would still commit,
        and the last flush would write the same attempts again), then writes the rest."""
        self._stopping = True
        if self._loop is not None:
            self._ready.set()
            await asyncio.wait({self._loop}, timeout=max(grace, 5.0))
            if not self._loop.done():
                self._loop.cancel()
                log.warning(
                    "attempt results not written; those attempts are made again after restart",
                    extra={"pending": len(self._results)},
                )
                return
        await self._flush(tries=5)
        await self._write_marks(self._marks.due(time.monotonic(), everything=True))
        if self._held:
            log.warning(
                "attempts sent ahead of a failed ingest transaction not recorded; their"
                " records are read again after the restart",
                extra={"pending": len(self._held)},
            )

    async def _write_loop(self) -> None:
        while not self._stopping:
            if self._held or self._marks.waiting:
                with contextlib.suppress(TimeoutError):
                    wait = HOLD_CHECK_SECONDS if self._held else COALESCE_SECONDS
                    await asyncio.wait_for(self._ready.wait(), wait)
                if self._held:
                    await self._release_held()
            else:
                await self._ready.wait()
            if self._stopping:
                return
            # Let results gather into one transaction: a burst within a few ms; results that
            # trickle in (slow endpoints) for longer, or each would commit on its own.
            await asyncio.sleep(GATHER_SECONDS)
            if len(self._results) < WRITE_BATCH // 4:
                await asyncio.sleep(TRICKLE_SECONDS)
            await self._flush()
            await self._write_marks(self._marks.due(time.monotonic()))

    async def _write_marks(self, marks: list[Mark]) -> None:
        """Subscription updates that waited to be coalesced; put back if the store is away."""
        if marks:
            try:
                await self._runner.call(self._store.write_marks, marks)
            except Exception:
                self._marks.put_back(marks)

    async def _release_held(self) -> None:
        """Held results whose deliveries are stored now go to be written; those that waited
        too long are given up (counted as unrecorded)."""
        try:
            stored = await self._runner.call(
                self._store.stored, [r.attempt.delivery_id for _, r in self._held]
            )
        except Unavailable:
            stored = set()
        now = time.monotonic()
        keep = []
        for until, held in self._held:
            if held.attempt.delivery_id in stored:
                self._results.append(held)
                self._ready.set()
            elif now > until:
                self._audited.discard(held.attempt.attempt_id)
                self._released.discard(held.attempt.attempt_id)
                self._counters.unrecorded(1)
            else:
                keep.append((until, held))
        self._held = keep

    async def _flush(self, tries: int | None = None) -> None:
        """Writes every pending result; while the database is down it keeps retrying
        (`tries` bounds that at shutdown: unwritten attempts are then made again)."""
        while self._results:
            batch = await self._recordable(self._results[:WRITE_BATCH])
            if not batch:
                continue
            audited = {r.attempt.attempt_id for r in batch} & self._audited
            marks = self._marks.take(batch, utcnow(), time.monotonic())
            try:
                await self._runner.call(
                    self._store.record_attempts, batch, audited=audited, marks=marks
                )
            except Exception as exc:
                self._marks.put_back(marks)
                # A bug is retried (and logged each time) like an outage: a writer that
                # ended would leave every later attempt unrecorded.
                if isinstance(exc, Unavailable):
                    self._outage.failed(exc.message)
                else:
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
            self._outage.ended()
            del self._results[: len(batch)]
            self._audited -= audited
            for done in batch:
                if done.attempt.attempt_id in self._released:
                    self._released.discard(done.attempt.attempt_id)
                else:
                    self._finished(done)
            if any(done.ordered for done in batch):
                self._after_ordered_write()  # the next deliveries of their keys may go
            self._counters.audited("direct", len(audited))
            if len(audited) < len(batch):
                self._counters.audited("outbox", len(batch) - len(audited))
                self._after_outbox_write()
        self._ready.clear()

    async def _recordable(self, batch: list[RecordedAttempt]) -> list[RecordedAttempt]:
        """The batch without the attempts of jobs sent ahead and not stored: made (and
        audited, if that went out directly) but never recorded, having no delivery. Those
        whose transaction failed are held until their records are stored again."""
        missing = await self._ledger.unstored(r.attempt.delivery_id for r in batch)
        waiting = self._ledger.take_failed(r.attempt.delivery_id for r in batch)
        if waiting:
            until = time.monotonic() + HOLD_SECONDS
            for held in [r for r in batch if r.attempt.delivery_id in waiting]:
                self._results.remove(held)
                self._held.append((until, held))
                self._released.add(held.attempt.attempt_id)
                self._finished(held)
            batch = [r for r in batch if r.attempt.delivery_id not in waiting]
        if not missing:
            return batch
        for lost in [r for r in batch if r.attempt.delivery_id in missing]:
            self._results.remove(lost)
            self._audited.discard(lost.attempt.attempt_id)
            self._finished(lost)
        self._counters.unrecorded(len(missing))
        return [r for r in batch if r.attempt.delivery_id not in missing]
