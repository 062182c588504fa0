"""Payload filters over the running pipeline with a real receiver, on SQLite and
PostgreSQL: checked when set, applied at fan-out and on replay, counted when they refuse."""

import time
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from tests.pipeline_support import Pipeline, Receiver, cloud_event, structured
from tests.support import Api, eventually, expect_error, scrape, value
from webhooks.v1 import webhook_service_pb2 as pb

FILTERED = "webhooks_deliveries_filtered_total"


def _update(api: Api, subscription_id: str, text: str) -> Any:
    request = pb.UpdateSubscriptionRequest(
        subscription=pb.Subscription(id=subscription_id, filter=text),
        update_mask=field_mask_pb2.FieldMask(paths=["filter"]),
    )
    return api.call("UpdateSubscription", request).subscription


def test_a_filter_is_checked_when_set_and_shown(api: Api) -> None:
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create, filter="data.amount >")
    assert details["reason"] == "INVALID_FILTER"
    assert details["violations"]["subscription.filter"].startswith("1:14: Syntax error")

    sub = api.create(filter='event.type.startsWith("person.")').subscription
    assert sub.filter == 'event.type.startsWith("person.")'
    got = api.call("GetSubscription", pb.GetSubscriptionRequest(id=sub.id)).subscription
    assert got.filter == sub.filter

    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, _update, api, sub.id, "event.typo")
    assert details["reason"] == "INVALID_FILTER"
    assert "1:6: undefined field 'typo'" in details["violations"]["subscription.filter"]
    assert _update(api, sub.id, "data.n > 1").filter == "data.n > 1"
    assert _update(api, sub.id, "").filter == ""  # removed: every event again


def test_filters_choose_which_events_reach_a_subscription(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    api = pipeline.api
    every = api.create(url=receiver.url("/every")).subscription
    big = api.create(url=receiver.url("/big"), filter="data.amount > 100").subscription
    api.create(url=receiver.url("/none"), filter="data.missing == 1")  # fails: refused
    amounts = [50, 150, 300, 99]
    pipeline.send(*[structured(cloud_event("person.created", {"amount": n})) for n in amounts])

    receiver.wait_for("/every", 4)
    got = receiver.wait_for("/big", 2)
    assert sorted(r.json["data"]["amount"] for r in got) == [150, 300]
    samples = eventually(
        lambda: (s := scrape(api)) and value(s, "webhooks_deliveries_created_total") == 6 and s
    )
    assert value(samples, FILTERED, result="false") == 2
    assert value(samples, FILTERED, result="error") == 4
    assert receiver.at("/none") == []

    # A changed filter applies to the next events (this instance's cache is dropped).
    _update(api, big.id, "data.amount < 100")
    pipeline.send(structured(cloud_event("person.created", {"amount": 7})))
    assert receiver.wait_for("/big", 3)[2].json["data"]["amount"] == 7

    # A replay sends only what the filter passes, even to a subscription made later.
    later = api.create(url=receiver.url("/later"), filter="data.amount >= 150").subscription
    since = timestamp_pb2.Timestamp()
    since.FromSeconds(int(time.time()) - 600)
    request = pb.ReplayEventsRequest(subscription_id=later.id, since=since)
    assert api.call("ReplayEvents", request).queued_count == 2
    replayed = receiver.wait_for("/later", 2)
    assert sorted(r.json["data"]["amount"] for r in replayed) == [150, 300]

    # A test event is asked for by name: no filter stands in its way.
    api.call("SendTestEvent", pb.SendTestEventRequest(subscription_id=later.id))
    assert receiver.wait_for("/later", 3)[2].json.get("test") is True
    assert len(receiver.at("/every")) == 5 and every.filter == ""
