"""Deliveries sent ahead of their ingest transaction, on SQLite and PostgreSQL: what the
planner sends ahead, what the transaction stores of it, and what it reports not stored."""

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import peewee as pw
import pytest
from google.protobuf import field_mask_pb2

from service.app import App
from service.domain.fan_out import pair
from service.domain.models import Event
from service.domain.pipeline import Ingested, Job
from service.engine import ahead as ahead_module
from service.engine.ahead import AheadPlanner
from service.engine.change_watcher import WATCH_SECONDS
from service.store.ingest import IngestStore
from service.store.runner import StoreRunner
from service.store.tables import SubscriptionRow
from tests.pipeline_support import Pipeline, Receiver, cloud_event, structured
from tests.support import Api
from webhooks.v1 import events_pb2 as E
from webhooks.v1 import webhook_service_pb2 as pb

LEASE = timedelta(seconds=60)


def _event(event_id: str | None = None, event_type: str = "person.created") -> Event:
    return Event(
        id=event_id or uuid.uuid4().hex,
        type=event_type,
        tenant="acme",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        data=b'{"n": 1}',
    )


def _parts(api: Api) -> tuple[App, IngestStore]:
    assert api.app is not None
    return api.app, api.app.stores.ingest


def _ingest(api: Api, events: list[Event], ahead: list[Job]) -> Ingested:
    app, store = _parts(api)
    with app.database.connection_context():
        return store.ingest(events, {}, LEASE, ahead)


def _plan(api: Api, *batches: list[Event]) -> list[list[Job]]:
    """Plans each batch in turn with one planner, no transaction ending in between."""
    app, store = _parts(api)

    async def run() -> list[list[Job]]:
        runner = StoreRunner(app.database, 1, inline_reads=False)
        try:
            planner = AheadPlanner(runner, store, lambda: {}, LEASE)
            return [await planner.plan(batch) for batch in batches]
        finally:
            runner.close()

    return asyncio.run(run())


def _delivery_ids(api: Api, subscription_id: str) -> set[str]:
    listed = api.call(
        "ListDeliveries", pb.ListDeliveriesRequest(subscription_id=subscription_id, page_size=100)
    ).deliveries
    return {d.id for d in listed}


def test_jobs_sent_ahead_are_stored_under_their_own_ids(api: Api) -> None:
    subs = [api.create(event_types=["person.*"]).subscription.id for _ in range(2)]
    api.create(event_types=["invoice.paid"])
    events = [_event(), _event()]
    (ahead,) = _plan(api, events)
    assert sorted((j.event_id, j.subscription_id) for j in ahead) == sorted(
        (e.id, s) for e in events for s in subs
    )
    ingested = _ingest(api, events, ahead)
    assert ingested.jobs == [] and ingested.not_stored == frozenset()
    stored = _delivery_ids(api, subs[0]) | _delivery_ids(api, subs[1])
    assert stored == {j.delivery_id for j in ahead}


def test_what_the_transaction_matches_differently_decides(api: Api) -> None:
    kept = api.create(event_types=["person.created"]).subscription.id
    gone = api.create(event_types=["person.created"]).subscription.id
    event = _event()
    (ahead,) = _plan(api, [event])
    # After the plan, as if on another instance: one subscription is disabled, one created.
    api.call(
        "UpdateSubscription",
        pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(id=gone, enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        ),
    )
    new = api.create(event_types=["person.created"]).subscription.id
    ingested = _ingest(api, [event], ahead)
    by_sub = {j.subscription_id: j.delivery_id for j in ahead}
    assert ingested.not_stored == {by_sub[gone]}
    assert [j.subscription_id for j in ingested.jobs] == [new]
    assert _delivery_ids(api, kept) == {by_sub[kept]}
    assert _delivery_ids(api, gone) == set()


def test_a_re_consumed_event_is_not_planned_and_a_stale_plan_is_not_stored(api: Api) -> None:
    sub = api.create(event_types=["person.created"]).subscription.id
    event = _event()
    (first,) = _plan(api, [event])
    _ingest(api, [event], first)
    assert _plan(api, [event]) == [[]]
    # A plan made before the event was stored (another instance's) stores nothing.
    ingested = _ingest(
        api, [event], [replace(j, delivery_id=f"msg_{uuid.uuid4().hex}") for j in first]
    )
    assert ingested.jobs == []
    assert len(ingested.not_stored) == 1
    assert _delivery_ids(api, sub) == {first[0].delivery_id}


def test_a_copy_in_a_later_batch_waits_for_the_first_transaction(api: Api) -> None:
    api.create(event_types=["person.created"])
    event, other = _event(), _event()
    first, second = _plan(api, [event], [_event(event.id), other])
    assert [j.event_id for j in first] == [event.id]
    assert [j.event_id for j in second] == [other.id]  # the copy is left to its transaction


def test_the_planner_sees_this_instance_s_changes_at_once(api: Api) -> None:
    app, store = _parts(api)

    async def run() -> tuple[int, int]:
        runner = StoreRunner(app.database, 1, inline_reads=False)
        try:
            planner = AheadPlanner(runner, store, lambda: {}, LEASE)
            before = len(await planner.plan([_event()]))
            await asyncio.to_thread(api.create, event_types=["person.created"])
            planner.invalidate()
            return before, len(await planner.plan([_event()]))
        finally:
            runner.close()

    assert asyncio.run(run()) == (0, 1)


@pytest.mark.parametrize("event_type", ["person.created", "invoice.paid"])
def test_each_pair_is_planned_once(api: Api, event_type: str) -> None:
    api.create(event_types=["person.*", "person.created"])
    event = _event(event_type=event_type)
    (ahead,) = _plan(api, [event, _event(event.id, event_type)])
    assert len({pair(j) for j in ahead}) == len(ahead) == (event_type == "person.created")


def test_an_attempt_sent_ahead_for_a_subscription_gone_meanwhile_is_never_recorded(
    pipeline: Pipeline, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Changed below straight in the database, without a change log row: the caches do not
    # see it, as they would not see another instance's change before reading the log.
    app = pipeline.api.app
    assert app is not None
    gone = pipeline.api.create(url=receiver.url("/gone"), event_types=["person.created"])
    # The change log row of its creation read, so nothing forgets the views cached next.
    time.sleep(2 * WATCH_SECONDS + 0.2)
    pipeline.send(structured(cloud_event("person.created", {"n": 1})))
    receiver.wait_for("/gone", 1)
    # Its transaction may still run (the delivery is sent meanwhile): disabled before it
    # commits, this first delivery would go unrecorded too.
    deadline = time.monotonic() + 10
    while not _delivery_ids(pipeline.api, gone.subscription.id):
        assert time.monotonic() < deadline, "the first delivery was never stored"
        time.sleep(0.05)
    with app.database.connection_context():
        SubscriptionRow.update(enabled=False).where(
            SubscriptionRow.id == gone.subscription.id
        ).execute()
    pipeline.send(structured(cloud_event("person.created", {"n": 2})))
    assert [r.json["data"]["n"] for r in receiver.wait_for("/gone", 2)] == [1, 2]
    deadline = time.monotonic() + 10
    while app.metrics.attempts_unrecorded._value.get() < 1:
        assert time.monotonic() < deadline, "the unstored attempt was not counted"
        time.sleep(0.05)
    assert len(_delivery_ids(pipeline.api, gone.subscription.id)) == 1
    # The pipeline goes on: the next delivery is recorded as ever.
    kept = pipeline.api.create(url=receiver.url("/kept"), event_types=["person.created"])
    pipeline.send(structured(cloud_event("person.created", {"n": 3})))
    (received,) = receiver.wait_for("/kept", 1)
    delivery = pipeline.wait_status(received.headers["webhook-id"], E.DELIVERY_STATUS_SUCCEEDED)
    assert delivery.subscription_id == kept.subscription.id
    assert [r.json["data"]["n"] for r in receiver.at("/gone")] == [1, 2]
    assert app.metrics.attempts_unrecorded._value.get() == 1


def test_a_large_batch_is_left_to_its_transaction(api: Api) -> None:
    api.create(event_types=["person.created"])
    size = ahead_module.AHEAD_MAX_EVENTS
    small, large = _plan(api, [_event() for _ in range(size)], [_event() for _ in range(size + 1)])
    assert len(small) == size and large == []


def test_attempts_sent_ahead_of_a_failed_transaction_are_recorded_once_it_is_stored(
    pipeline: Pipeline, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails the ingest transaction after the batch's jobs were sent ahead:
    the records are read again and stored under the same delivery ids, and the first
    attempts, held meanwhile, are recorded beside the second ones."""
    app = pipeline.api.app
    assert app is not None
    store = app.stores.ingest
    ingest = store.ingest
    failed: list[int] = []

    def failing_once(*args: object, **kwargs: object) -> Ingested:
        if not failed:
            failed.append(1)
            raise pw.OperationalError("the connection was cut")
        return ingest(*args, **kwargs)  # type: ignore[arg-type]

    pipeline.api.create(url=receiver.url("/held"), event_types=["person.created"])
    monkeypatch.setattr(store, "ingest", failing_once)
    pipeline.send(structured(cloud_event("person.created", {"n": 1})))
    first, second = receiver.wait_for("/held", 2)
    assert failed and first.headers["webhook-id"] == second.headers["webhook-id"]
    deadline = time.monotonic() + 10
    while len((delivery := pipeline.delivery(first.headers["webhook-id"])).attempts) < 2:
        assert time.monotonic() < deadline, f"{len(delivery.attempts)} attempts recorded"
        time.sleep(0.1)
    assert app.metrics.attempts_unrecorded._value.get() == 0


def test_each_delivery_refers_to_its_own_event_row(api: Api) -> None:
    """New events' row ids come from one statement on SQLite (the newest rows), checked
    against the batch; a batch with an event stored before looks them up instead."""
    api.create(event_types=["person.*"])
    first = [_event() for _ in range(3)]
    second = [_event(), first[0], _event()]
    jobs = _ingest(api, first, []).jobs + _ingest(api, second, []).jobs
    app, store = _parts(api)
    with app.database.connection_context():
        rows = app.database.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT d.id, e.tenant, e.event_id FROM deliveries d JOIN events e ON e.id = d.event_id"
        ).fetchall()
        with app.database.atomic():
            older = {("acme", first[1].id)}  # not among the newest rows: looked up
            assert store._newest_event_pks(older).keys() == older
    assert {d: (tenant, event_id) for d, tenant, event_id in rows} == {
        j.delivery_id: (j.tenant, j.event_id) for j in jobs
    }
    assert len(jobs) == 5  # the event stored before made none
