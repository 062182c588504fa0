"""Each delivery outcome with real receivers: retries, exhaustion, 410, 429, timeouts, redirects,
SSRF refusal, rate limits, the circuit breaker and duplicate events."""

import socket
import time
from datetime import timedelta
from typing import Any

import pytest

from service.domain.clock import utcnow
from tests.pipeline_support import Pipeline, Receiver, Reply, audit_records, cloud_event, structured
from tests.support import eventually
from webhooks.v1 import events_pb2
from webhooks.v1 import webhook_service_pb2 as pb

E = events_pb2


def _send_one(
    pipeline: Pipeline, receiver: Receiver, path: str, *replies: Reply, **fields: Any
) -> tuple[Any, str]:
    created = pipeline.api.create(url=receiver.reply(path, *replies), **fields)
    pipeline.send(structured(cloud_event("person.created", {"n": 1})))
    first = receiver.wait_for(path, 1)[0]
    return created, first.headers["webhook-id"]


def test_retry_then_success_keeps_the_webhook_id(pipeline: Pipeline, receiver: Receiver) -> None:
    _, delivery_id = _send_one(pipeline, receiver, "/flaky", Reply(500), Reply(503), Reply(200))
    requests = receiver.wait_for("/flaky", 3)
    assert {r.headers["webhook-id"] for r in requests} == {delivery_id}
    delivery = pipeline.wait_status(delivery_id, E.DELIVERY_STATUS_SUCCEEDED)
    assert [a.http_status for a in delivery.attempts] == [500, 503, 200]
    assert [a.outcome for a in delivery.attempts] == [
        E.ATTEMPT_OUTCOME_RETRY_SCHEDULED,
        E.ATTEMPT_OUTCOME_RETRY_SCHEDULED,
        E.ATTEMPT_OUTCOME_SUCCEEDED,
    ]
    assert delivery.attempts[0].error_kind == E.ERROR_KIND_HTTP_STATUS
    audits = audit_records(pipeline.bootstrap, {delivery_id}, 3)
    assert sorted(a.attempt_number for a in audits) == [1, 2, 3]


def test_an_answer_with_nul_characters_is_recorded_and_the_pipeline_goes_on(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    # No PostgreSQL text column holds NUL: stored as it came, the attempt batch failed for
    # good and no attempt was recorded after it.
    _, delivery_id = _send_one(
        pipeline, receiver, "/nul", Reply(500, body="bad\x00body"), Reply(200, body="\x00")
    )
    delivery = pipeline.wait_status(delivery_id, E.DELIVERY_STATUS_SUCCEEDED)
    assert [a.response_body for a in delivery.attempts] == ["bad\ufffdbody", "\ufffd"]
    _, later = _send_one(pipeline, receiver, "/after", Reply(200))
    assert pipeline.wait_status(later, E.DELIVERY_STATUS_SUCCEEDED).attempt_count == 1


def test_an_unexpected_error_writing_attempts_is_retried(
    pipeline: Pipeline, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault injected into the real store: the first write of attempts raises a bug's error.
    assert pipeline.api.app is not None
    store = pipeline.api.app.stores.attempts
    record = store.record_attempts
    failures: list[int] = []

    def failing_once(batch: Any, **options: Any) -> Any:
        if not failures:
            failures.append(len(batch))
            raise RuntimeError("injected")
        return record(batch, **options)

    monkeypatch.setattr(store, "record_attempts", failing_once)
    _, delivery_id = _send_one(pipeline, receiver, "/once", Reply(200))
    assert pipeline.wait_status(delivery_id, E.DELIVERY_STATUS_SUCCEEDED).attempt_count == 1
    assert failures and len(receiver.at("/once")) == 1  # recorded on the retry, not resent
    _, later = _send_one(pipeline, receiver, "/later", Reply(200))
    pipeline.wait_status(later, E.DELIVERY_STATUS_SUCCEEDED)


def test_exhausted_schedule_fails_the_delivery(pipeline: Pipeline, receiver: Receiver) -> None:
    created, delivery_id = _send_one(pipeline, receiver, "/down", Reply(500, body="boom"))
    delivery = pipeline.wait_status(delivery_id, E.DELIVERY_STATUS_FAILED)
    assert delivery.attempt_count == 3  # the first attempt and the two retries of the schedule
    assert delivery.attempts[-1].outcome == E.ATTEMPT_OUTCOME_FAILED
    assert delivery.attempts[-1].response_body == "boom"
    assert not delivery.HasField("next_attempt_time")
    time.sleep(0.5)
    assert len(receiver.at("/down")) == 3
    subscription = pipeline.api.call(
        "GetSubscription", pb.GetSubscriptionRequest(id=created.subscription.id)
    )
    assert subscription.subscription.enabled  # failing for less than the disable period
    audits = audit_records(pipeline.bootstrap, {delivery_id}, 3)
    assert sorted(a.outcome for a in audits) == [
        E.ATTEMPT_OUTCOME_RETRY_SCHEDULED,
        E.ATTEMPT_OUTCOME_RETRY_SCHEDULED,
        E.ATTEMPT_OUTCOME_FAILED,
    ]


def test_gone_disables_the_subscription(pipeline: Pipeline, receiver: Receiver) -> None:
    created, delivery_id = _send_one(pipeline, receiver, "/gone", Reply(410))
    pipeline.wait_status(delivery_id, E.DELIVERY_STATUS_FAILED)
    subscription = pipeline.api.call(
        "GetSubscription", pb.GetSubscriptionRequest(id=created.subscription.id)
    )
    assert not subscription.subscription.enabled
    assert subscription.subscription.disabled_reason == pb.DISABLED_REASON_ENDPOINT_GONE
    pipeline.send(structured(cloud_event("person.created", {"n": 2})))
    time.sleep(1.0)
    assert len(receiver.at("/gone")) == 1


def test_failing_too_long_disables_the_subscription(make_pipeline: Any, receiver: Receiver) -> None:
    pipeline = make_pipeline(
        WEBHOOKS_DISABLE_AFTER_SECONDS="60", WEBHOOKS_RETRY_SCHEDULE="0.2,0.2,0.2"
    )
    created = pipeline.api.create(url=receiver.reply("/failing", Reply(500)))
    # Pretend the endpoint has been failing for two minutes already.
    from service.store.tables import SubscriptionRow, database_proxy

    with database_proxy.obj.connection_context():
        SubscriptionRow.update(failing_since=utcnow() - timedelta(minutes=2)).where(
            SubscriptionRow.id == created.subscription.id
        ).execute()
    pipeline.send(structured(cloud_event("person.created", {})))
    delivery_id = receiver.wait_for("/failing", 1)[0].headers["webhook-id"]
    pipeline.wait_status(delivery_id, E.DELIVERY_STATUS_FAILED)
    got = pipeline.api.call(
        "GetSubscription", pb.GetSubscriptionRequest(id=created.subscription.id)
    ).subscription
    assert not got.enabled and got.disabled_reason == pb.DISABLED_REASON_ENDPOINT_FAILING
    # Re-enabling clears the reason and the failure streak.
    from google.protobuf import field_mask_pb2

    request = pb.UpdateSubscriptionRequest(
        subscription=pb.Subscription(id=created.subscription.id, enabled=True),
        update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
    )
    again = pipeline.api.call("UpdateSubscription", request).subscription
    assert again.enabled and again.disabled_reason == pb.DISABLED_REASON_UNSPECIFIED


def test_429_honours_retry_after(pipeline: Pipeline, receiver: Receiver) -> None:
    _, delivery_id = _send_one(
        pipeline, receiver, "/busy", Reply(429, {"Retry-After": "1"}), Reply(200)
    )
    first, second = receiver.wait_for("/busy", 2)
    assert second.at - first.at >= 0.7  # Retry-After 1 s; the schedule alone retries after 0.2
    delivery = pipeline.wait_status(delivery_id, E.DELIVERY_STATUS_SUCCEEDED)
    assert delivery.attempts[0].http_status == 429


def test_timeout_is_an_attempt_failure(make_pipeline: Any, receiver: Receiver) -> None:
    pipeline = make_pipeline(WEBHOOKS_ATTEMPT_TIMEOUT_SECONDS="0.3")
    _, delivery_id = _send_one(pipeline, receiver, "/slow", Reply(200, delay=1.0), Reply(200))
    delivery = pipeline.wait_status(delivery_id, E.DELIVERY_STATUS_SUCCEEDED)
    first = delivery.attempts[0]
    assert first.error_kind == E.ERROR_KIND_TIMEOUT and first.http_status == 0
    assert 250 <= first.latency.ToMilliseconds() < 1000


def test_redirects_are_not_followed(pipeline: Pipeline, receiver: Receiver) -> None:
    target = receiver.url("/elsewhere")
    _, delivery_id = _send_one(
        pipeline, receiver, "/moved", Reply(302, {"Location": target}), Reply(200)
    )
    delivery = pipeline.wait_status(delivery_id, E.DELIVERY_STATUS_SUCCEEDED)
    assert (
        delivery.attempts[0].error_kind == E.ERROR_KIND_REDIRECT
        and delivery.attempts[0].http_status == 302
    )
    assert receiver.at("/elsewhere") == []


def test_ssrf_guard_refuses_names_that_resolve_to_private_addresses(
    make_pipeline: Any, receiver: Receiver
) -> None:
    # The host's own name resolves to loopback here; only 127.0.0.2 is allow-listed, so the
    # create-time check (which cannot resolve) passes and the delivery-time check refuses.
    host = socket.gethostname()
    assert socket.gethostbyname(host).startswith("127."), (
        "this test needs the host name to resolve to loopback"
    )
    pipeline = make_pipeline(WEBHOOKS_SSRF_ALLOW_CIDRS="127.0.0.2/32")
    created = pipeline.api.create(url=f"http://{host}:{receiver.port}/ssrf")
    assert created.subscription.id
    pipeline.send(structured(cloud_event("person.created", {})))
    [delivery] = _deliveries(pipeline, 1)
    delivery = pipeline.wait_status(delivery.id, E.DELIVERY_STATUS_FAILED)
    assert {a.error_kind for a in delivery.attempts} == {E.ERROR_KIND_SSRF_BLOCKED}
    assert receiver.at("/ssrf") == []


def _deliveries(pipeline: Pipeline, count: int, timeout: float = 15) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = list(pipeline.api.call("ListDeliveries", pb.ListDeliveriesRequest()).deliveries)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} of {count} deliveries")
        time.sleep(0.05)


def test_rate_limit_spaces_deliveries(pipeline: Pipeline, receiver: Receiver) -> None:
    pipeline.api.create(url=receiver.url("/limited"), rate_limit_per_second=10)
    pipeline.send(*[structured(cloud_event("person.created", {"n": n})) for n in range(12)])
    requests = receiver.wait_for("/limited", 12)
    times = [r.at for r in requests]
    # 12 at 10/s with a burst of 1 go out over 1.1 s; unlimited, they arrive within ~50 ms.
    # Arrival times only bound the spacing: the receiver shares this process and the machine
    # with a parallel suite, and a stall at the start bunches the first arrivals (seen: five
    # within 1 ms). The exact spacing is checked at the dispatcher (tests/unit).
    assert times[-1] - times[0] >= 0.5, times


def test_circuit_breaker_isolates_a_dead_endpoint(make_pipeline: Any, receiver: Receiver) -> None:
    pipeline = make_pipeline(
        WEBHOOKS_CIRCUIT_FAILURES="3",
        WEBHOOKS_CIRCUIT_COOLDOWN_SECONDS="30",
        WEBHOOKS_RETRY_SCHEDULE="0.2,0.2,0.2",
        WEBHOOKS_ENDPOINT_CONCURRENCY="4",
    )
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    dead = pipeline.api.create(url=f"http://127.0.0.1:{dead_port}/dead")
    pipeline.api.create(url=receiver.url("/healthy"))
    start = time.monotonic()
    pipeline.send(*[structured(cloud_event("person.created", {"n": n})) for n in range(20)])
    receiver.wait_for("/healthy", 20, timeout=10)
    healthy_time = time.monotonic() - start
    assert healthy_time < 8
    time.sleep(1.0)
    listed = pipeline.api.call(
        "ListDeliveries",
        pb.ListDeliveriesRequest(subscription_id=dead.subscription.id, page_size=100),
    ).deliveries
    assert len(listed) == 20

    # Without the breaker: 20 deliveries x 4 requests. With it, the first concurrent wave
    # (4) fails and the circuit opens; the rest keep to the schedule with attempts made
    # without a request (CIRCUIT_OPEN) and end FAILED when it runs out.
    def all_failed() -> list[Any]:
        found = pipeline.api.call(
            "ListDeliveries",
            pb.ListDeliveriesRequest(subscription_id=dead.subscription.id, page_size=100),
        ).deliveries
        return list(found) if all(d.status == E.DELIVERY_STATUS_FAILED for d in found) else []

    finished = eventually(all_failed, timeout=20)
    assert all(d.attempt_count == 4 for d in finished)
    kinds = [
        attempt.error_kind
        for d in finished
        for attempt in pipeline.api.call(
            "GetDelivery", pb.GetDeliveryRequest(id=d.id)
        ).delivery.attempts
    ]
    requests = [k for k in kinds if k != E.ERROR_KIND_CIRCUIT_OPEN]
    assert len(kinds) == 80 and len(requests) <= 4, len(requests)


def test_a_host_gets_at_most_its_concurrency_however_many_subscriptions_share_it(
    make_pipeline: Any, receiver: Receiver
) -> None:
    pipeline = make_pipeline(WEBHOOKS_HOST_CONCURRENCY="4", WEBHOOKS_ENDPOINT_CONCURRENCY="10")
    # Six subscriptions on one host, each endpoint slow: up to 60 requests at once without
    # the host's limit.
    for n in range(6):
        pipeline.api.create(url=receiver.reply(f"/shared-{n}", Reply(delay=0.3)))
    pipeline.send(*[structured(cloud_event("person.created", {"n": n})) for n in range(5)])
    for n in range(6):
        receiver.wait_for(f"/shared-{n}", 5, timeout=30)
    assert 2 <= receiver.max_active <= 4, receiver.max_active
    # The gauges count down to nothing once every result is written.
    assert pipeline.api.app is not None
    metrics = pipeline.api.app.metrics

    def gauges() -> tuple[float, ...]:
        return tuple(
            g.collect()[0].samples[0].value
            for g in (
                metrics.requests_in_flight,
                metrics.deliveries_held,
                metrics.results_unwritten,
                metrics.deliveries_parked,
            )
        )

    deadline = time.monotonic() + 10
    while gauges() != (0, 0, 0, 0):
        assert time.monotonic() < deadline, gauges()
        time.sleep(0.1)


def test_duplicate_events_are_delivered_once(pipeline: Pipeline, receiver: Receiver) -> None:
    pipeline.api.create(url=receiver.url("/dup"))
    event = cloud_event("person.created", {"n": 1}, event_id="same-id")
    pipeline.send(structured(event), structured(event))
    pipeline.send(structured(event))
    receiver.wait_for("/dup", 1)
    marker = cloud_event("person.created", {"n": 2})
    pipeline.send(structured(marker))
    receiver.wait_for("/dup", 2)
    time.sleep(0.5)
    assert sorted(r.json["id"] for r in receiver.at("/dup")) == sorted(["same-id", marker["id"]])


def test_concurrency_limit_and_a_slow_endpoint_does_not_delay_others(
    make_pipeline: Any, receiver: Receiver
) -> None:
    pipeline = make_pipeline(WEBHOOKS_ENDPOINT_CONCURRENCY="2")
    pipeline.api.create(url=receiver.url("/fast-lane"))
    pipeline.send(structured(cloud_event("person.created", {"n": "warm-up"})))
    receiver.wait_for("/fast-lane", 1)  # the consumer has joined its group
    pipeline.api.create(url=receiver.reply("/slow-lane", Reply(200, delay=0.5)))
    start = time.monotonic()
    pipeline.send(*[structured(cloud_event("person.created", {"n": n})) for n in range(8)])
    fast = receiver.wait_for("/fast-lane", 9)
    assert fast[-1].at - start < 1.5  # not queued behind the slow endpoint's 2 s of work
    slow = receiver.wait_for("/slow-lane", 8)
    # Never more than two requests at once at the slow endpoint: 8 x 0.5 s / 2 >= 2 s.
    assert slow[-1].at - slow[0].at >= 1.2  # 8 of 0.5 s, 2 at a time; arrivals may bunch
    starts = sorted(r.at for r in slow)
    overlapping = max(sum(1 for t in starts if s <= t < s + 0.45) for s in starts)
    assert overlapping <= 2


def _deferred(pipeline: Pipeline) -> float:
    app = pipeline.api.app
    assert app is not None
    value = app.metrics.registry.get_sample_value(
        "webhooks_deliveries_deferred_total", {"reason": "endpoint_backlog"}
    )
    return value or 0.0


def test_a_lane_holds_what_its_endpoint_sends_in_two_seconds(
    make_pipeline: Any, receiver: Receiver
) -> None:
    # 5 at once: 50 jobs in memory until a latency is known, then 2 s of sends (~1 ms each).
    pipeline = make_pipeline(WEBHOOKS_ENDPOINT_CONCURRENCY="5")
    pipeline.api.create(url=receiver.url("/busy"))
    # 30 answers first, so one slow answer (a connect, a pause of the machine) has faded
    # from the smoothed latency before the burst.
    pipeline.send(*[structured(cloud_event("person.created", {"n": n})) for n in range(30)])
    receiver.wait_for("/busy", 30)
    pipeline.send(*[structured(cloud_event("person.created", {"n": n})) for n in range(150)])
    receiver.wait_for("/busy", 180)
    # With a fixed limit of 50, 100 of them went to the store and came back a second later.
    assert _deferred(pipeline) == 0


def test_a_lane_whose_endpoint_slows_down_hands_its_excess_to_the_store(
    make_pipeline: Any, receiver: Receiver
) -> None:
    pipeline = make_pipeline(WEBHOOKS_ENDPOINT_CONCURRENCY="1")
    url = receiver.reply("/slowing", Reply(200, delay=0.4))
    pipeline.api.create(url=url)
    pipeline.send(*[structured(cloud_event("person.created", {"n": n})) for n in range(12)])
    # All 12 fit the first limit (50). Once the first answer took 0.4 s the lane holds 2 s
    # of work, 5 jobs; the rest wait in the store and come back, none lost or doubled.
    received = receiver.wait_for("/slowing", 12, timeout=30)
    assert _deferred(pipeline) >= 5
    assert len({r.headers["webhook-id"] for r in received}) == 12


def test_topic_pattern_consumes_every_matching_topic(
    make_pipeline: Any, receiver: Receiver, broker: Any
) -> None:
    import asyncio
    import uuid

    from kafka.connection import KafkaConnection
    from kafka.provisioning import create_topics
    from tests.pipeline_support import produce

    prefix = f"pat{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}.crm", f"{prefix}.billing"]
    asyncio.run(create_topics(KafkaConnection(broker.bootstrap), names))
    pipeline = make_pipeline(WEBHOOKS_KAFKA_TOPIC_PATTERN=rf"{prefix}\..*")
    pipeline.api.create(url=receiver.url("/pattern"))
    for name in names:
        produce(
            broker.bootstrap, name, [structured(cloud_event("person.created", {"topic": name}))]
        )
    got = receiver.wait_for("/pattern", 2)
    assert sorted(r.json["data"]["topic"] for r in got) == sorted(names)


def test_broker_outage_delays_but_loses_no_audit_record(
    pipeline: Pipeline, receiver: Receiver, broker: Any
) -> None:
    from service.store.tables import OutboxRow, database_proxy

    created = pipeline.api.create(url=receiver.url("/outage"))
    broker.pause()
    try:
        reply = pipeline.api.call(
            "SendTestEvent", pb.SendTestEventRequest(subscription_id=created.subscription.id)
        )
        assert reply.delivery.status == E.DELIVERY_STATUS_SUCCEEDED  # delivery does not need Kafka
        time.sleep(0.5)
        with database_proxy.obj.connection_context():
            assert OutboxRow.select().count() >= 1  # the audit record waits in the outbox
    finally:
        broker.resume()
    # At least once, by attempt id: the send tried while the broker paused may land too.
    records = audit_records(pipeline.bootstrap, {reply.delivery.id}, 1, timeout=30)
    assert {r.attempt_id for r in records} == {reply.delivery.attempts[0].id}
    assert {r.trigger for r in records} == {E.ATTEMPT_TRIGGER_TEST}
    deadline = time.monotonic() + 10
    while True:
        with database_proxy.obj.connection_context():
            if OutboxRow.select().count() == 0:
                break
        assert time.monotonic() < deadline, "the outbox never drained"
        time.sleep(0.1)
