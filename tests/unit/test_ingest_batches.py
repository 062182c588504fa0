"""Storing ingest batches with deliveries sent ahead: a copy of an event in a later batch
never has its transaction commit before the one its first copy was sent ahead of."""

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from service.domain.fan_out import Matcher
from service.domain.models import Event
from service.domain.pipeline import Ingested, Job
from service.engine.ahead import AheadPlanner
from service.engine.dispatcher import Dispatcher
from service.engine.ingest_batches import BatchStorer
from service.metrics import Metrics
from service.store.ingest import IngestStore
from service.store.runner import StoreRunner

LEASE = timedelta(seconds=60)


def _event(event_id: str) -> Event:
    return Event(event_id, "person.created", "acme", datetime(2026, 1, 1, tzinfo=UTC), b"{}")


class FakeStore:
    """Events stored by ingest; every enabled subscription takes every type."""

    def __init__(self) -> None:
        self.stored: set[str] = set()

    def unseen(self, events: Sequence[Event]) -> list[Event]:
        return [e for e in events if e.id not in self.stored]

    def matchers(self, tenants: Sequence[str]) -> dict[str, list[Matcher]]:
        return {t: [Matcher("sub_1", ("*",), frozenset())] for t in tenants}

    def ingest(
        self, events: Sequence[Event], scopes: Any, lease: timedelta, ahead: Sequence[Job]
    ) -> Ingested:
        self.stored.update(e.id for e in events)
        return Ingested([], frozenset())


class FakeRunner:
    """Store calls inline; matcher reads wait for `matchers_open`, and the log says when
    each transaction started and ended."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.matchers_open = asyncio.Event()
        self.log: list[tuple[str, tuple[str, ...]]] = []

    async def read_first(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        if fn == self.store.matchers:
            await self.matchers_open.wait()
        return fn(*args)

    async def call_first(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        ids = tuple(e.id for e in args[0])
        self.log.append(("start", ids))
        await asyncio.sleep(0.01)  # the transaction takes a moment
        result = fn(*args)
        self.log.append(("end", ids))
        return result


class FakeDispatcher:
    def __init__(self) -> None:
        self.ahead: list[str] = []

    async def submit(self, jobs: Sequence[Job], stored: Any = None) -> None:
        if stored is not None:
            self.ahead.extend(job.event_id for job in jobs)


def _storer() -> tuple[BatchStorer, FakeRunner, FakeDispatcher]:
    """A BatchStorer with a real planner over the fakes."""
    store = FakeStore()
    runner = FakeRunner(store)
    dispatcher = FakeDispatcher()
    planner = AheadPlanner(cast(StoreRunner, runner), cast(IngestStore, store), dict, LEASE)
    storer = BatchStorer(
        runner=cast(StoreRunner, runner),
        store=cast(IngestStore, store),
        planner=planner,
        dispatcher=cast(Dispatcher, dispatcher),
        required_scopes=dict,
        lease=LEASE,
        metrics=Metrics(),
    )
    return storer, runner, dispatcher


def test_a_copy_arriving_while_its_first_is_planned_waits_for_that_transaction() -> None:
    async def run() -> tuple[list[tuple[str, tuple[str, ...]]], list[str]]:
        storer, runner, dispatcher = _storer()
        first = asyncio.ensure_future(storer([_event("same"), _event("other")]))
        await asyncio.sleep(0.01)  # planned, waiting for the subscriptions
        second = asyncio.ensure_future(storer([_event("same")]))  # a producer's retry
        await asyncio.sleep(0.01)
        runner.matchers_open.set()
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        return runner.log, dispatcher.ahead

    log, ahead = asyncio.run(run())
    assert log == [
        ("start", ("same", "other")),
        ("end", ("same", "other")),
        ("start", ("same",)),  # after the first ended: it finds "same" stored
        ("end", ("same",)),
    ]
    assert sorted(ahead) == ["other", "same"]  # sent ahead once, by the first batch


def test_a_batch_that_finds_its_copies_planned_elsewhere_sends_nothing_ahead() -> None:
    # Two batches, each with an event the other is planning: neither may wait holding
    # what the other waits for.
    async def run() -> tuple[list[tuple[str, tuple[str, ...]]], list[str]]:
        storer, runner, dispatcher = _storer()
        first = asyncio.ensure_future(storer([_event("a")]))
        second = asyncio.ensure_future(storer([_event("b")]))
        await asyncio.sleep(0.01)  # both planned, both waiting for the subscriptions
        third = asyncio.ensure_future(storer([_event("b"), _event("a")]))
        await asyncio.sleep(0.01)
        runner.matchers_open.set()
        await asyncio.wait_for(asyncio.gather(first, second, third), 5)
        return runner.log, dispatcher.ahead

    log, ahead = asyncio.run(run())
    ends = {ids: n for n, (what, ids) in enumerate(log) if what == "end"}
    starts = {ids: n for n, (what, ids) in enumerate(log) if what == "start"}
    assert starts[("b", "a")] > max(ends[("a",)], ends[("b",)])
    assert sorted(ahead) == ["a", "b"]
