"""Ordered delivery per key over the running pipeline with a real receiver, on SQLite and
PostgreSQL: order per key under injected 500s, a FAILED event skipped or holding its key
(until released or retried), other keys flowing meanwhile."""

import json
import time
from typing import Any

import grpc

from tests.pipeline_support import Pipeline, Received, Receiver, Record, Reply, cloud_event
from tests.support import eventually, expect_error
from webhooks.v1 import events_pb2
from webhooks.v1 import webhook_service_pb2 as pb

E = events_pb2
HEADERS = [("content-type", b"application/cloudevents+json")]


def keyed(key: str, n: int, *, partitionkey: str | None = None) -> Record:
    """Event n of `key`, with the Kafka record key `key` (or a partitionkey instead)."""
    event = cloud_event("person.created", {"key": partitionkey or key, "n": n})
    if partitionkey is not None:
        event["partitionkey"] = partitionkey
    return (key.encode(), json.dumps(event).encode(), HEADERS)


def interleaved(keys: list[str], count: int) -> list[Record]:
    return [keyed(key, n) for n in range(count) for key in keys]


def per_key(requests: list[Received]) -> dict[str, list[tuple[int, int]]]:
    """(n, status) of each request, by key, in the order they arrived."""
    out: dict[str, list[tuple[int, int]]] = {}
    for r in requests:
        data = r.json["data"]
        out.setdefault(data["key"], []).append((data["n"], r.status))
    return out


def _deliveries(pipeline: Pipeline, subscription_id: str) -> list[Any]:
    request = pb.ListDeliveriesRequest(subscription_id=subscription_id, page_size=100)
    return list(pipeline.api.call("ListDeliveries", request).deliveries)


def test_each_key_arrives_in_order_one_at_a_time_under_500s(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    api = pipeline.api
    # Every event fails once, then succeeds: its retry must come before the next event.
    ordered = api.create(
        url=receiver.reply_each("/ordered", Reply(500), Reply()), ordering=pb.ORDERING_PER_KEY
    ).subscription
    assert ordered.ordering == pb.ORDERING_PER_KEY
    api.create(url=receiver.url("/plain"))
    keys = ["k1", "k2", "k3"]
    pipeline.send(*interleaved(keys, 8))
    receiver.wait_for("/plain", 24)
    got = receiver.wait_for("/ordered", 48, timeout=60)
    expected = [(n, status) for n in range(8) for status in (500, 200)]
    assert per_key(got) == dict.fromkeys(keys, expected)
    done = eventually(
        lambda: (
            (d := _deliveries(pipeline, ordered.id))
            and all(x.status == E.DELIVERY_STATUS_SUCCEEDED for x in d)
            and d
        )
    )
    assert sorted({d.ordering_key for d in done}) == keys and len(done) == 24


def test_a_failed_event_is_skipped_or_holds_its_key_until_released(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    api = pipeline.api

    def poisoned(body: Any) -> bool:
        return bool(body["data"] == {"key": "a", "n": 1})

    skip = api.create(
        url=receiver.reply_if("/skip", poisoned, Reply(500)), ordering=pb.ORDERING_PER_KEY
    ).subscription
    hold = api.create(
        url=receiver.reply_if("/hold", poisoned, Reply(500)), ordering=pb.ORDERING_PER_KEY_HOLD
    ).subscription
    pipeline.send(*interleaved(["a", "b"], 4))

    # Skipped after its schedule (three attempts): the rest of key a follows.
    skipped = per_key(receiver.wait_for("/skip", 10))
    assert skipped["a"] == [(0, 200), (1, 500), (1, 500), (1, 500), (2, 200), (3, 200)]
    assert skipped["b"] == [(n, 200) for n in range(4)]

    # Held: key a stops at its FAILED event while key b flows.
    held = per_key(receiver.wait_for("/hold", 8))
    assert held["b"] == [(n, 200) for n in range(4)]
    time.sleep(1.0)  # time enough for a2 to go, were the key not held
    assert per_key(receiver.at("/hold"))["a"] == [(0, 200), (1, 500), (1, 500), (1, 500)]
    failed = next(d for d in _deliveries(pipeline, hold.id) if d.status == E.DELIVERY_STATUS_FAILED)
    assert failed.ordering_key == "a" and failed.holds_key
    waiting = [d for d in _deliveries(pipeline, hold.id) if d.status == E.DELIVERY_STATUS_PENDING]
    assert len(waiting) == 2

    released = api.call("ReleaseDelivery", pb.ReleaseDeliveryRequest(id=failed.id)).delivery
    assert released.status == E.DELIVERY_STATUS_FAILED and not released.holds_key
    after = per_key(receiver.wait_for("/hold", 10))
    assert after["a"][4:] == [(2, 200), (3, 200)]
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        api.call,
        "ReleaseDelivery",
        pb.ReleaseDeliveryRequest(id=failed.id),
    )
    assert details["reason"] == "DELIVERY_NOT_HOLDING"
    assert skip.ordering == pb.ORDERING_PER_KEY


def test_a_retried_held_event_goes_first_and_partitionkey_is_the_key(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    api = pipeline.api
    failing = {"on": True}

    def poisoned(body: Any) -> bool:
        return failing["on"] and body["data"] == {"key": "p", "n": 0}

    hold = api.create(
        url=receiver.reply_if("/hold", poisoned, Reply(500)), ordering=pb.ORDERING_PER_KEY_HOLD
    ).subscription
    # The partitionkey, not the record key, is the ordering key.
    pipeline.send(keyed("x", 0, partitionkey="p"), keyed("x", 1, partitionkey="p"))
    receiver.wait_for("/hold", 3)
    failed = eventually(
        lambda: next((d for d in _deliveries(pipeline, hold.id) if d.holds_key), None)
    )
    assert failed.ordering_key == "p"
    failing["on"] = False
    retried = api.call("RetryDelivery", pb.RetryDeliveryRequest(id=failed.id)).delivery
    assert not retried.holds_key
    got = per_key(receiver.wait_for("/hold", 5))
    assert got["p"] == [(0, 500), (0, 500), (0, 500), (0, 200), (1, 200)]
