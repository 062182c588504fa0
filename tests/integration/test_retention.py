"""Retention: finished history and orphaned events past the age go, owed deliveries stay."""

import time
from datetime import timedelta
from typing import Any

import grpc
import peewee as pw

from service.domain.clock import utcnow
from service.store import tables
from service.store.database import open_database
from service.store.migrations import migrate
from service.store.retention import prune_batch
from tests.pipeline_support import Pipeline, Receiver, Reply, cloud_event, structured
from webhooks.v1 import webhook_service_pb2 as pb

PENDING, SUCCEEDED, FAILED = 1, 2, 3


def _event(event_id: str, age: timedelta) -> tables.EventRow:
    moment = utcnow() - age
    return tables.EventRow.create(
        tenant="t",
        event_id=event_id,
        type="a.b",
        occurred_at=moment,
        received_at=moment,
        data=b"{}",
    )


def _delivery(
    sub: tables.SubscriptionRow, event: tables.EventRow, status: int, age: timedelta
) -> str:
    delivery_id = f"msg_{event.event_id}"
    created = utcnow() - age
    tables.DeliveryRow.create(
        id=delivery_id,
        tenant="t",
        subscription=sub,
        event=event,
        event_type="a.b",
        status=status,
        created_at=created,
        next_attempt_at=created if status == PENDING else None,
    )
    tables.AttemptRow.create(
        id=f"att_{event.event_id}",
        delivery=delivery_id,
        attempt_number=1,
        trigger=1,
        started_at=created,
        url="https://e.com/",
        outcome=1,
    )
    return delivery_id


def test_prune_batches_keep_pending_deliveries_and_their_events(database_url: str) -> None:
    db: pw.Database = open_database(database_url)
    db.connect()
    try:
        migrate(db)
        now = utcnow()
        old, new = timedelta(days=40), timedelta(days=1)
        sub = tables.SubscriptionRow.create(
            id="sub_1",
            tenant="t",
            name="n",
            url="https://e.com/",
            created_by="p",
            created_at=now,
            updated_at=now,
        )
        _delivery(sub, _event("done-old", old), SUCCEEDED, old)
        _delivery(sub, _event("failed-old", old), FAILED, old)
        kept_pending = _delivery(sub, _event("pending-old", old), PENDING, old)
        kept_recent = _delivery(sub, _event("done-new", new), SUCCEEDED, new)
        _event("unmatched-old", old)
        _event("unmatched-new", new)
        for request_id, age in (("old", timedelta(hours=25)), ("new", timedelta(hours=1))):
            tables.IdempotencyRow.create(
                tenant="t",
                method="CreateSubscription",
                request_id=request_id,
                request_hash="h",
                resource_id="sub_1",
                result_encrypted=b"x",
                created_at=now - age,
            )
        for name, age in (("sub_read", timedelta(hours=2)), ("sub_recent", timedelta(minutes=1))):
            tables.SubscriptionChangeRow.create(
                subscription_id=name, tenant="t", changed_at=now - age
            )

        totals = {
            "attempts": 0,
            "deliveries": 0,
            "events": 0,
            "idempotency_keys": 0,
            "subscription_changes": 0,
        }
        rounds = 0
        while True:  # limit 1: every step is its own small transaction
            counts = prune_batch(db, now - timedelta(days=30), now - timedelta(hours=24), limit=1)
            rounds += 1
            if not any(counts.values()):
                break
            totals = {k: totals[k] + counts[k] for k in totals}
        assert totals == {
            "attempts": 2,
            "deliveries": 2,
            "events": 3,
            "idempotency_keys": 1,
            "subscription_changes": 1,
        }
        assert rounds > 2
        assert {d.id for d in tables.DeliveryRow.select()} == {kept_pending, kept_recent}
        assert tables.AttemptRow.select().count() == 2
        assert {e.event_id for e in tables.EventRow.select()} == {
            "pending-old",
            "done-new",
            "unmatched-new",
        }
        assert [r.request_id for r in tables.IdempotencyRow.select()] == ["new"]
        kept = [r.subscription_id for r in tables.SubscriptionChangeRow.select()]
        assert kept == ["sub_recent"]
    finally:
        db.close()


def test_service_prunes_history_in_the_background(make_pipeline: Any, receiver: Receiver) -> None:
    pipeline: Pipeline = make_pipeline(
        WEBHOOKS_RETENTION_SECONDS="1",
        WEBHOOKS_RETENTION_INTERVAL_SECONDS="0.2",
        WEBHOOKS_RETRY_SCHEDULE="60",
        # The tests' 5 s lease can run out on a loaded machine before the first attempt is
        # recorded: a second attempt would end the pending delivery (FAILED) and it would go.
        WEBHOOKS_DELIVERY_LEASE_SECONDS="120",
    )
    api = pipeline.api
    api.create(url=receiver.reply("/ok", Reply(200)), event_types=["person.created"])
    api.create(url=receiver.reply("/down", Reply(503)), event_types=["invoice.paid"])
    pipeline.send(
        structured(cloud_event("person.created", {"n": 1})),
        structured(cloud_event("invoice.paid", {"n": 2})),
        structured(cloud_event("organization.merged", {"n": 3})),  # matches no subscription
    )
    done_id = receiver.wait_for("/ok", 1)[0].headers["webhook-id"]
    pending_id = receiver.wait_for("/down", 1)[0].headers["webhook-id"]

    deadline = time.monotonic() + 30
    while _exists(pipeline, done_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _exists(pipeline, done_id):
        left = pipeline.api.call("GetDelivery", pb.GetDeliveryRequest(id=done_id))
        app = pipeline.api.app
        assert app is not None and app.dispatcher is not None
        metrics = app.metrics
        raise AssertionError(
            f"the finished delivery was never pruned: {left}; requests at /ok:"
            f" {len(receiver.at('/ok'))}; results waiting to be written:"
            f" {app.dispatcher.pending_results}; unrecorded:"
            f" {metrics.attempts_unrecorded._value.get()}"
        )
    # Still owed: kept whatever its age.
    assert _exists(pipeline, pending_id), f"gone, after {receiver.at('/down')} at /down"
    assert api.app is not None
    with api.app.database.connection_context():
        remaining = [e.type for e in tables.EventRow.select()]
    assert remaining == ["invoice.paid"]


def _exists(pipeline: Pipeline, delivery_id: str) -> bool:
    try:
        pipeline.api.call("GetDelivery", pb.GetDeliveryRequest(id=delivery_id))
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True
