"""The dispatcher's parts, each alone with fakes: lanes, the ahead ledger, the attempt writer,
the audit publisher, the facade that joins them, and the root taking a fake of a test's own."""

import asyncio
import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from service.config import Settings
from service.domain.outcomes import AttemptResult, ErrorKind, Outcome, Trigger
from service.domain.pipeline import AttemptRecord, Ingested, Job, RecordedAttempt, Target
from service.domain.subscription_marks import Mark
from service.engine.ahead_ledger import AheadLedger
from service.engine.attempt_writer import HOLD_CHECK_SECONDS, WRITE_BATCH, AttemptWriter
from service.engine.audit import AuditPublisher
from service.engine.counters import DeliveryCounters
from service.engine.dispatcher import DeliveryPolicy, Dispatcher
from service.engine.lanes import Lanes
from service.errors import Unavailable
from service.metrics import Metrics
from service.store.attempts import AttemptStore
from service.store.runner import StoreRunner
from tests.support import Api, ServerThread, base_env
from webhooks.v1 import events_pb2 as E
from webhooks.v1 import webhook_service_pb2 as pb


def _job(n: int, subscription: str = "sub_1") -> Job:
    return Job(f"msg_{n}", subscription, "t", f"e{n}", "x.y", b"{}", 0, Trigger.SCHEDULED)


def _target(subscription: str = "sub_1", *, enabled: bool = True) -> Target:
    return Target(subscription, "t", "https://example.com/", {}, (b"k",), 0, enabled, None)


def _recorded(job: Job, outcome: Outcome = Outcome.SUCCEEDED) -> RecordedAttempt:
    record = AttemptRecord(
        attempt_id=f"att_{job.delivery_id}",
        delivery_id=job.delivery_id,
        subscription_id=job.subscription_id,
        event_id=job.event_id,
        tenant=job.tenant,
        event_type=job.event_type,
        attempt_number=1,
        url="https://example.com/",
        trigger=job.trigger,
        attempt_time=datetime(2026, 1, 1),  # naive UTC, as the store keeps it
        latency_ms=5,
        http_status=200 if outcome == Outcome.SUCCEEDED else 500,
        error_kind=ErrorKind.NONE,
        error_message="",
        response_body="",
        outcome=outcome,
        next_attempt_time=None,
    )
    return RecordedAttempt(record, None, "audit", b"v")


class FakeRunner:
    """Runs store calls inline, as the store thread would."""

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def read(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


class FakeStore:
    """What the engine writes, kept in lists; `fail_next` makes the next write raise."""

    def __init__(self, targets: dict[str, Target] | None = None) -> None:
        self.written: list[tuple[list[str], set[str]]] = []
        self.deferred: list[str] = []
        self.failed_disabled: list[str] = []
        self.marks: list[Mark] = []
        self.present: set[str] = set()  # delivery ids `stored` finds
        self.fail_next: Exception | None = None
        self._targets = targets if targets is not None else {"sub_1": _target()}

    def record_attempts(
        self,
        items: Sequence[RecordedAttempt],
        *,
        audited: Collection[str] = (),
        marks: Sequence[Mark] | None = None,
    ) -> None:
        self.marks.extend(marks or ())
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.written.append(([i.attempt.delivery_id for i in items], set(audited)))

    def write_marks(self, marks: Sequence[Mark]) -> None:
        self.marks.extend(marks)

    def targets(self, ids: Iterable[str]) -> dict[str, Target]:
        return {i: self._targets[i] for i in ids if i in self._targets}

    def stored(self, ids: Sequence[str]) -> set[str]:
        return self.present & set(ids)

    def defer(self, groups: Mapping[datetime, Sequence[str]]) -> None:
        for ids in groups.values():
            self.deferred.extend(ids)

    def fail_disabled(self, ids: Sequence[str]) -> None:
        self.failed_disabled.extend(ids)


class FakeAttempts:
    """Answers every attempt at once with `outcome`, remembering the jobs."""

    def __init__(self, outcome: Outcome = Outcome.SUCCEEDED) -> None:
        self.made: list[str] = []
        self.skipped: list[str] = []
        self.outcome = outcome
        self.closed = False

    async def make(self, job: Job, target: Target) -> RecordedAttempt:
        return await self.attempt(job, target)

    def attempt(self, job: Job, target: Target) -> "asyncio.Future[RecordedAttempt]":
        self.made.append(job.delivery_id)
        future: asyncio.Future[RecordedAttempt] = asyncio.get_running_loop().create_future()
        future.set_result(_recorded(job, self.outcome))
        return future

    def skip(self, job: Job, target: Target, result: AttemptResult) -> RecordedAttempt:
        self.skipped.append(job.delivery_id)
        return _recorded(job, Outcome.RETRY_SCHEDULED)

    async def close(self) -> None:
        self.closed = True


def _runner() -> StoreRunner:
    return cast(StoreRunner, FakeRunner())


def _store(fake: FakeStore) -> AttemptStore:
    return cast(AttemptStore, fake)


def _policy(**changes: Any) -> DeliveryPolicy:
    values: dict[str, Any] = {
        "endpoint_concurrency": 2,
        "default_rate_limit": 0,
        "circuit_failures": 3,
        "circuit_cooldown": 30.0,
        "max_in_flight": 10,
        "attempt_timeout": 1.0,
        "lease": timedelta(seconds=60),
    } | changes
    return DeliveryPolicy(**values)


# -- lanes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concurrency", "latency", "limit"),
    [
        (2, None, 50),  # unknown latency: 10 x concurrency, at least 50
        (10, None, 100),
        (2, 0.1, 40),  # two seconds of work at 2 x 10/s
        (2, 10.0, 2),  # a slow endpoint still holds a full wave
    ],
)
def test_a_lane_holds_about_two_seconds_of_its_endpoints_work(
    concurrency: int, latency: float | None, limit: int
) -> None:
    lanes = Lanes(endpoint_concurrency=concurrency, circuit_failures=3, circuit_cooldown=1)
    lane = lanes.lane("sub_1")
    lane.latency = latency
    assert lanes.limit(lane) == limit


def test_an_idle_lane_is_forgotten_only_once_its_rate_bucket_refilled() -> None:
    async def run() -> None:
        lanes = Lanes(endpoint_concurrency=1, circuit_failures=3, circuit_cooldown=1)
        lane = lanes.lane("sub_1")
        assert lane.rate_wait(10, now=100.0) == 0.0  # burst of 1 at 10/s
        lanes.forget_if_idle("sub_1", now=100.0)
        assert lanes.lane("sub_1") is lane  # still refilling: the next send must wait
        lanes.forget_if_idle("sub_1", now=101.0)
        assert lanes.lane("sub_1") is not lane

    asyncio.run(run())


# -- the ahead ledger -------------------------------------------------------------------


def test_the_ledger_reports_jobs_their_transaction_did_not_store_once() -> None:
    async def run() -> None:
        ledger = AheadLedger()
        stored: asyncio.Future[Ingested] = asyncio.get_running_loop().create_future()
        ledger.track(stored, [_job(1), _job(2)])
        waiting = asyncio.ensure_future(ledger.unstored(["msg_1", "msg_2"]))
        await asyncio.sleep(0)
        assert not waiting.done()  # waits for the transaction
        stored.set_result(Ingested([], frozenset({"msg_2"})))
        assert await waiting == {"msg_2"}
        assert await ledger.unstored(["msg_2"]) == set()  # forgotten once reported

    asyncio.run(run())


def test_a_failed_transaction_leaves_its_jobs_waiting_not_dropped() -> None:
    async def run() -> None:
        ledger = AheadLedger()
        stored: asyncio.Future[Ingested] = asyncio.get_running_loop().create_future()
        ledger.track(stored, [_job(1), _job(2)])
        stored.set_exception(Unavailable("database down"))
        assert await ledger.unstored(["msg_1", "msg_2", "msg_3"]) == set()
        assert ledger.take_failed(["msg_1", "msg_2", "msg_3"]) == {"msg_1", "msg_2"}
        assert ledger.take_failed(["msg_1"]) == set()  # forgotten once taken

    asyncio.run(run())


# -- the attempt writer --------------------------------------------------------------------


def _writer(store: FakeStore, ledger: AheadLedger, finished: list[str]) -> AttemptWriter:
    return AttemptWriter(
        runner=_runner(),
        store=_store(store),
        ledger=ledger,
        counters=DeliveryCounters(Metrics()),
        finished=lambda r: finished.append(r.attempt.delivery_id),
        after_outbox_write=lambda: None,
    )


def test_the_writer_stores_in_batches_and_skips_jobs_not_stored() -> None:
    async def run() -> tuple[FakeStore, list[str]]:
        store, ledger, finished = FakeStore(), AheadLedger(), list[str]()
        stored: asyncio.Future[Ingested] = asyncio.get_running_loop().create_future()
        ledger.track(stored, [_job(0)])
        stored.set_result(Ingested([], frozenset({"msg_0"})))
        writer = _writer(store, ledger, finished)
        writer.start()
        jobs = [_job(n) for n in range(WRITE_BATCH + 5)]
        writer.add([_recorded(j) for j in jobs[:3]], audited=True)
        writer.add([_recorded(j) for j in jobs[3:]])
        await writer.stop(grace=1)
        return store, finished

    store, finished = asyncio.run(run())
    written = [delivery for batch, _ in store.written for delivery in batch]
    assert "msg_0" not in written  # sent ahead, not stored: never recorded
    assert sorted(written) == sorted(f"msg_{n}" for n in range(1, WRITE_BATCH + 5))
    assert all(len(batch) <= WRITE_BATCH for batch, _ in store.written)
    audited = set().union(*(a for _, a in store.written))
    assert audited == {"att_msg_1", "att_msg_2"}  # their records need no outbox row
    assert sorted(finished) == sorted(f"msg_{n}" for n in range(WRITE_BATCH + 5))


def test_results_of_a_failed_transaction_wait_for_their_deliveries() -> None:
    """The database went away during the ingest transaction that jobs were sent ahead of:
    their results free their capacity at once and are written once the records, read
    again, have stored their deliveries."""

    async def run() -> tuple[FakeStore, list[str], list[str]]:
        store, ledger, finished = FakeStore(), AheadLedger(), list[str]()
        stored: asyncio.Future[Ingested] = asyncio.get_running_loop().create_future()
        ledger.track(stored, [_job(0), _job(1)])
        stored.set_exception(Unavailable("database down"))
        writer = _writer(store, ledger, finished)
        writer.start()
        writer.add([_recorded(_job(n)) for n in range(3)])
        await asyncio.sleep(0.1)
        written_before = [d for batch, _ in store.written for d in batch]
        assert sorted(finished) == ["msg_0", "msg_1", "msg_2"] and writer.pending == 2
        store.present.update({"msg_0", "msg_1"})  # the batch was read again and stored
        await asyncio.sleep(HOLD_CHECK_SECONDS + 0.2)
        await writer.stop(grace=1)
        return store, finished, written_before

    store, finished, written_before = asyncio.run(run())
    assert written_before == ["msg_2"]
    assert sorted(d for batch, _ in store.written for d in batch) == ["msg_0", "msg_1", "msg_2"]
    assert sorted(finished) == ["msg_0", "msg_1", "msg_2"]  # each once


def test_the_writer_retries_a_failed_write() -> None:
    async def run() -> tuple[FakeStore, list[str]]:
        store, finished = FakeStore(), list[str]()
        store.fail_next = RuntimeError("a bug")
        writer = _writer(store, AheadLedger(), finished)
        writer.start()
        writer.add([_recorded(_job(1))])
        await asyncio.sleep(1.2)  # one retry a second
        await writer.stop(grace=1)
        return store, finished

    store, finished = asyncio.run(run())
    assert [batch for batch, _ in store.written] == [["msg_1"]] and finished == ["msg_1"]


# -- the audit publisher -------------------------------------------------------------------


def test_audit_records_acked_by_the_broker_skip_the_outbox() -> None:
    async def run() -> FakeStore:
        store, published = FakeStore(), list[RecordedAttempt]()

        async def publish(items: Sequence[RecordedAttempt]) -> None:
            published.extend(items)

        writer = _writer(store, AheadLedger(), [])
        writer.start()
        audit = AuditPublisher(publish, writer)
        audit.add(_recorded(_job(1)))
        audit.add(_recorded(_job(2)))
        await audit.stop()
        await writer.stop(grace=1)
        assert len(published) == 2
        return store

    store = asyncio.run(run())
    assert store.written == [(["msg_1", "msg_2"], {"att_msg_1", "att_msg_2"})]


def test_while_the_broker_is_away_audit_records_go_through_the_outbox() -> None:
    async def run() -> tuple[FakeStore, int]:
        store, calls = FakeStore(), list[int]()

        async def publish(items: Sequence[RecordedAttempt]) -> None:
            calls.append(len(items))
            raise Unavailable("broker away")

        writer = _writer(store, AheadLedger(), [])
        writer.start()
        audit = AuditPublisher(publish, writer)
        audit.add(_recorded(_job(1)))
        await asyncio.sleep(0.2)  # gathered, sent, refused
        audit.add(_recorded(_job(2)))  # paused: straight to the outbox
        await audit.stop()
        await writer.stop(grace=1)
        return store, len(calls)

    store, calls = asyncio.run(run())
    assert calls == 1
    written = sorted(d for batch, _ in store.written for d in batch)
    assert written == ["msg_1", "msg_2"] and all(not a for _, a in store.written)


# -- the facade ----------------------------------------------------------------------------


def _dispatcher(store: FakeStore, attempts: FakeAttempts, **policy: Any) -> Dispatcher:
    return Dispatcher(
        runner=_runner(), store=_store(store), attempts=attempts, policy=_policy(**policy)
    )


def test_submitted_jobs_are_attempted_recorded_and_free_their_capacity() -> None:
    async def run() -> tuple[FakeStore, FakeAttempts, int]:
        store, attempts = FakeStore(), FakeAttempts()
        dispatcher = _dispatcher(store, attempts)
        await dispatcher.start()
        await dispatcher.submit([_job(n) for n in range(5)])
        await dispatcher.deliver_soon(_job(5), wait=2)  # returns once recorded
        free = dispatcher.free
        await dispatcher.stop(grace=1)
        return store, attempts, free

    store, attempts, free = asyncio.run(run())
    assert attempts.made == [f"msg_{n}" for n in range(6)] and attempts.closed
    assert sorted(d for batch, _ in store.written for d in batch) == attempts.made
    assert free == 10


def test_a_disabled_subscriptions_jobs_fail_without_an_attempt() -> None:
    async def run() -> tuple[FakeStore, FakeAttempts]:
        store = FakeStore({"sub_1": _target(enabled=False)})
        attempts = FakeAttempts()
        dispatcher = _dispatcher(store, attempts)
        await dispatcher.start()
        await dispatcher.submit([_job(1), _job(2)])
        await asyncio.sleep(0.05)
        await dispatcher.stop(grace=1)
        return store, attempts

    store, attempts = asyncio.run(run())
    assert attempts.made == [] and store.failed_disabled == ["msg_1", "msg_2"]


def test_an_open_circuit_skips_due_jobs_as_attempts_on_the_schedule() -> None:
    """Jobs due while the circuit is open become attempts without a request (CIRCUIT_OPEN),
    recorded like any failure, so their deliveries keep to the retry schedule."""

    async def run() -> tuple[FakeStore, FakeAttempts]:
        store, attempts = FakeStore(), FakeAttempts(Outcome.RETRY_SCHEDULED)
        dispatcher = _dispatcher(store, attempts, circuit_failures=2, endpoint_concurrency=1)
        await dispatcher.start()
        await dispatcher.submit([_job(n) for n in range(6)])
        await asyncio.sleep(0.1)
        await dispatcher.stop(grace=1)
        return store, attempts

    store, attempts = asyncio.run(run())
    assert attempts.made == ["msg_0", "msg_1"]  # two failures open the circuit
    assert attempts.skipped == [f"msg_{n}" for n in range(2, 6)]
    assert store.deferred == []  # none handed back without an attempt
    assert sorted(i for ids, _ in store.written for i in ids) == [f"msg_{n}" for n in range(6)]


# -- the composition root ------------------------------------------------------------------


def test_the_root_takes_an_attempt_maker_of_a_tests_own(tmp_path: Path) -> None:
    attempts = FakeAttempts()
    settings = Settings.from_env(base_env(tmp_path, f"sqlite:///{tmp_path / 'w.db'}"))
    server = ServerThread(settings, attempts=attempts)
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = Api(f"127.0.0.1:{port}", settings, channel)
            subscription = api.create().subscription
            reply = api.call(
                "SendTestEvent", pb.SendTestEventRequest(subscription_id=subscription.id)
            )
    finally:
        server.stop()
    assert attempts.made == [reply.delivery.id] and attempts.closed
    assert reply.delivery.status == E.DELIVERY_STATUS_SUCCEEDED


def test_a_rate_limited_endpoint_gets_its_attempts_spaced() -> None:
    class TimedAttempts(FakeAttempts):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self.all_made = asyncio.Event()

        def attempt(self, job: Job, target: Target) -> "asyncio.Future[RecordedAttempt]":
            self.times.append(asyncio.get_running_loop().time())
            if len(self.times) == 6:
                self.all_made.set()
            return super().attempt(job, target)

    async def run() -> list[float]:
        limited = _target()
        store = FakeStore({"sub_1": Target(**(limited.__dict__ | {"rate_limit_per_second": 20}))})
        attempts = TimedAttempts()
        dispatcher = _dispatcher(store, attempts, endpoint_concurrency=4)
        await dispatcher.start()
        await dispatcher.submit([_job(n) for n in range(6)])
        await asyncio.wait_for(attempts.all_made.wait(), 5)
        await dispatcher.stop(grace=1)
        return attempts.times

    times = asyncio.run(run())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 20/s with a burst of 2: two at once, then a token every 50 ms. A late send leaves its
    # token to the next one, so single gaps vary; the n-th send is never early.
    assert all(t - times[0] >= (n - 1) * 0.05 - 0.005 for n, t in enumerate(times[2:], 2)), gaps
    assert times[-1] - times[0] < 0.5, gaps  # and no slower than the rate
