"""Recovery by status and window, and ReplayEvents (replay and backfill), over the running
pipeline with a real receiver, on SQLite and PostgreSQL."""

import time
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from tests.pipeline_support import Pipeline, Receiver, cloud_event, structured
from tests.support import eventually, expect_error
from webhooks.v1 import events_pb2
from webhooks.v1 import webhook_service_pb2 as pb

E = events_pb2


def _ago(seconds: int) -> timestamp_pb2.Timestamp:
    moment = timestamp_pb2.Timestamp()
    moment.FromSeconds(int(time.time()) - seconds)
    return moment


def _deliveries(pipeline: Pipeline, subscription_id: str) -> list[Any]:
    request = pb.ListDeliveriesRequest(subscription_id=subscription_id, page_size=100)
    return list(pipeline.api.call("ListDeliveries", request).deliveries)


def _triggers(pipeline: Pipeline, delivery_id: str) -> list[int]:
    got = pipeline.api.call("GetDelivery", pb.GetDeliveryRequest(id=delivery_id)).delivery
    return [attempt.trigger for attempt in got.attempts]


def test_recover_takes_statuses_and_a_window(pipeline: Pipeline, receiver: Receiver) -> None:
    api = pipeline.api
    sub = api.create(url=receiver.url("/done")).subscription
    pipeline.send(*[structured(cloud_event("person.created", {"n": n})) for n in range(3)])
    receiver.wait_for("/done", 3)
    # Sent ahead of their ingest transaction, the deliveries may be stored after the requests.
    eventually(
        lambda: (
            [d.status for d in _deliveries(pipeline, sub.id)] == [E.DELIVERY_STATUS_SUCCEEDED] * 3
        )
    )

    def recover(**fields: Any) -> Any:
        request = pb.RecoverDeliveriesRequest(subscription_id=sub.id, since=_ago(600), **fields)
        return api.call("RecoverDeliveries", request)

    assert recover().queued_count == 0  # FAILED by default: none
    assert recover(statuses=[E.DELIVERY_STATUS_SUCCEEDED], until=_ago(300)).queued_count == 0
    assert recover(statuses=[E.DELIVERY_STATUS_SUCCEEDED]).queued_count == 3
    again = receiver.wait_for("/done", 6)
    # The same deliveries again: same webhook-ids, a MANUAL attempt each.
    assert sorted(r.headers["webhook-id"] for r in again[3:]) == sorted(
        r.headers["webhook-id"] for r in again[:3]
    )
    done = eventually(
        lambda: (
            all(len(_triggers(pipeline, d.id)) == 2 for d in _deliveries(pipeline, sub.id))
            and _deliveries(pipeline, sub.id)
        )
    )
    assert all(
        _triggers(pipeline, d.id) == [E.ATTEMPT_TRIGGER_SCHEDULED, E.ATTEMPT_TRIGGER_MANUAL]
        for d in done
    )
    refused: list[tuple[dict[str, Any], str, str]] = [
        ({"statuses": [E.DELIVERY_STATUS_PENDING]}, "statuses", "STATUS_NOT_RECOVERABLE"),
        ({"statuses": [99]}, "statuses", "UNKNOWN_STATUS"),
        ({"until": _ago(900)}, "until", "EMPTY_TIME_RANGE"),
    ]
    for fields, field, reason in refused:
        details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, recover, **fields)
        assert details["reason"] == reason and field in details["violations"]


def test_replay_backfills_a_new_subscription_once_per_request_id(
    make_pipeline: Any, receiver: Receiver
) -> None:
    pipeline = make_pipeline(WEBHOOKS_REPLAY_MAX_EVENTS="5")
    api = pipeline.api
    first = api.create(url=receiver.url("/first")).subscription
    people = [cloud_event("person.created", {"n": n}) for n in range(4)]
    leads = [cloud_event("lead.updated", {"n": n}) for n in range(2)]
    pipeline.send(*[structured(e) for e in people + leads])
    receiver.wait_for("/first", 6)

    # Made after the events: a backfill of the types it takes, as new deliveries.
    later = api.create(url=receiver.url("/later"), event_types=["person.*"]).subscription

    since = _ago(600)  # one value: a retry must be the same request

    def replay(subscription_id: str = later.id, **fields: Any) -> Any:
        request = pb.ReplayEventsRequest(subscription_id=subscription_id, since=since, **fields)
        return api.call("ReplayEvents", request)

    assert replay(request_id="backfill-1").queued_count == 4
    got = receiver.wait_for("/later", 4)
    assert sorted(r.json["id"] for r in got) == sorted(e["id"] for e in people)
    first_ids = {r.headers["webhook-id"] for r in receiver.at("/first")}
    assert not first_ids & {r.headers["webhook-id"] for r in got}
    made = eventually(
        lambda: (
            (d := _deliveries(pipeline, later.id))
            and all(x.status == E.DELIVERY_STATUS_SUCCEEDED for x in d)
            and d
        )
    )
    assert all(_triggers(pipeline, d.id) == [E.ATTEMPT_TRIGGER_REPLAY] for d in made)

    # A retry of the call makes nothing more and answers the same.
    assert replay(request_id="backfill-1").queued_count == 4
    time.sleep(1)
    assert len(receiver.at("/later")) == 4 and len(_deliveries(pipeline, later.id)) == 4
    details = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, replay, request_id="backfill-1", event_type="person.*"
    )
    assert details["reason"] == "REQUEST_ID_REUSED"

    # A replay to a subscription that had them: a second delivery per event, narrowed.
    assert replay(first.id, event_type="lead.*").queued_count == 2
    replayed = receiver.wait_for("/first", 8)[6:]
    assert sorted(r.json["id"] for r in replayed) == sorted(e["id"] for e in leads)

    # Bounded per call: six events are more than WEBHOOKS_REPLAY_MAX_EVENTS=5.
    before = len(_deliveries(pipeline, first.id))
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, replay, first.id)
    assert details["reason"] == "REPLAY_TOO_LARGE" and "since" in details["violations"]
    assert len(_deliveries(pipeline, first.id)) == before
    # An empty window, a malformed type, another tenant's subscription.
    assert replay(until=_ago(300)).queued_count == 0
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, replay, event_type="person.**")
    assert details["reason"] == "MALFORMED_EVENT_TYPES"
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        api.call,
        "ReplayEvents",
        pb.ReplayEventsRequest(subscription_id=later.id, since=_ago(600)),
        as_="gina",
    )
