"""Delivery RPCs over the running pipeline: list and filter, get, retry, recover, test events,
PublishEvent, and delivery over HTTPS with a private CA."""

import json
import ssl
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
from standardwebhooks.webhooks import Webhook

from tests.pipeline_support import Pipeline, Receiver, Reply, audit_records, cloud_event, structured
from tests.pki import cert, key_pem, pem
from tests.support import eventually, expect_error
from webhooks.v1 import events_pb2
from webhooks.v1 import webhook_service_pb2 as pb

E = events_pb2


def _list(pipeline: Pipeline, **fields: Any) -> list[Any]:
    return list(
        pipeline.api.call(
            "ListDeliveries", pb.ListDeliveriesRequest(**fields), as_="reader"
        ).deliveries
    )


def test_list_deliveries_filters_and_pages(pipeline: Pipeline, receiver: Receiver) -> None:
    api = pipeline.api
    ok = api.create(url=receiver.url("/ok")).subscription
    bad = api.create(url=receiver.reply("/bad", Reply(500)), event_types=["lead.*"]).subscription
    pipeline.send(*[structured(cloud_event("person.created", {"n": n})) for n in range(5)])
    pipeline.send(*[structured(cloud_event("lead.updated", {"n": n})) for n in range(2)])
    eventually(lambda: len(_list(pipeline, statuses=[E.DELIVERY_STATUS_FAILED])) == 2)
    eventually(lambda: len(_list(pipeline, statuses=[E.DELIVERY_STATUS_SUCCEEDED])) == 7)

    everything = _list(pipeline, page_size=100)
    assert len(everything) == 9
    assert [d.id for d in everything] == sorted(
        (d.id for d in everything), reverse=True
    )  # newest first
    assert {d.subscription_id for d in _list(pipeline, subscription_id=bad.id)} == {bad.id}
    assert len(_list(pipeline, subscription_id=ok.id, event_type="lead.updated")) == 2
    assert len(_list(pipeline, event_type="person.created")) == 5
    assert all(not d.attempts for d in everything)  # attempts only in GetDelivery

    pages, token = [], ""
    while True:
        page = api.call(
            "ListDeliveries", pb.ListDeliveriesRequest(page_size=4, page_token=token), as_="reader"
        )
        pages.append([d.id for d in page.deliveries])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [4, 4, 1]
    assert [i for p in pages for i in p] == [d.id for d in everything]
    page_two = _list(pipeline, page_size=4, skip=4)
    assert [d.id for d in page_two] == pages[1]
    # Each row shows its last attempt: status, count and latency.
    for row in everything:
        assert row.attempt_count >= 1 and row.HasField("last_attempt_latency")
        assert row.last_attempt_latency.ToMilliseconds() >= 0
        full = api.call("GetDelivery", pb.GetDeliveryRequest(id=row.id)).delivery
        last = max(full.attempts, key=lambda a: a.attempt_number)
        assert row.last_attempt_latency == last.latency
        assert row.last_http_status == last.http_status

    future = timestamp_pb2.Timestamp()
    future.FromSeconds(int(time.time()) + 3600)
    assert _list(pipeline, start_time=future) == []
    assert len(_list(pipeline, end_time=future)) == 9
    details = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.call,
        "ListDeliveries",
        pb.ListDeliveriesRequest(statuses=[E.DELIVERY_STATUS_UNSPECIFIED]),
    )
    assert "statuses" in details["violations"]
    # Another tenant sees none of it.
    assert api.call("ListDeliveries", pb.ListDeliveriesRequest(), as_="gina").deliveries == []


def test_retry_and_recover_failed_deliveries(pipeline: Pipeline, receiver: Receiver) -> None:
    api = pipeline.api
    sub = api.create(url=receiver.reply("/later", Reply(500))).subscription
    pipeline.send(
        structured(cloud_event("person.created", {"n": 1})),
        structured(cloud_event("person.created", {"n": 2})),
    )
    failed = eventually(
        lambda: (d := _list(pipeline, statuses=[E.DELIVERY_STATUS_FAILED])) and len(d) == 2 and d
    )
    # The endpoint is fixed now: retry one by hand, recover the other.
    receiver.reply("/later", Reply(200))
    retried = api.call("RetryDelivery", pb.RetryDeliveryRequest(id=failed[0].id)).delivery
    assert retried.status == E.DELIVERY_STATUS_PENDING
    done = eventually(
        lambda: (
            (d := api.call("GetDelivery", pb.GetDeliveryRequest(id=failed[0].id)).delivery).status
            == E.DELIVERY_STATUS_SUCCEEDED
            and d
        )
    )
    assert done.attempts[-1].trigger == E.ATTEMPT_TRIGGER_MANUAL and done.attempt_count == 4

    since = timestamp_pb2.Timestamp()
    since.FromSeconds(int(time.time()) - 600)
    recovered = api.call(
        "RecoverDeliveries", pb.RecoverDeliveriesRequest(subscription_id=sub.id, since=since)
    )
    assert recovered.queued_count == 1
    eventually(lambda: len(_list(pipeline, statuses=[E.DELIVERY_STATUS_SUCCEEDED])) == 2)
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.call,
        "RecoverDeliveries",
        pb.RecoverDeliveriesRequest(subscription_id=sub.id),
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        api.call,
        "RetryDelivery",
        pb.RetryDeliveryRequest(id=failed[0].id),
        as_="gina",
    )
    # A disabled subscription must be enabled before its deliveries are re-queued.
    api.call(
        "UpdateSubscription",
        pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(id=sub.id, enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        ),
    )
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        api.call,
        "RetryDelivery",
        pb.RetryDeliveryRequest(id=failed[0].id),
    )
    assert details["reason"] == "SUBSCRIPTION_DISABLED"


def test_send_test_event_delivers_now_with_test_flag(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    api = pipeline.api
    created = api.create(url=receiver.url("/test"), event_types=["lead.created"])
    reply = api.call(
        "SendTestEvent", pb.SendTestEventRequest(subscription_id=created.subscription.id)
    )
    delivery = reply.delivery
    assert delivery.test and delivery.status == E.DELIVERY_STATUS_SUCCEEDED
    assert delivery.event_type == "lead.created" and len(delivery.attempts) == 1
    assert delivery.attempts[0].trigger == E.ATTEMPT_TRIGGER_TEST
    [request] = receiver.at("/test")
    payload = Webhook(created.secret).verify(
        request.body, {k.lower(): v for k, v in request.headers.items()}
    )
    assert payload["test"] is True and payload["data"] == {
        "lead_id": "lead_123",
        "email": "ada@example.com",
    }
    # A chosen type, and a failing endpoint: one attempt, FAILED, nothing disabled.
    receiver.reply("/test", Reply(410))
    failed = api.call(
        "SendTestEvent",
        pb.SendTestEventRequest(
            subscription_id=created.subscription.id, event_type="person.created"
        ),
    ).delivery
    assert failed.status == E.DELIVERY_STATUS_FAILED and failed.attempts[0].http_status == 410
    again = api.call(
        "GetSubscription", pb.GetSubscriptionRequest(id=created.subscription.id)
    ).subscription
    assert again.enabled
    audit_records(pipeline.bootstrap, {delivery.id, failed.id}, 2)
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.call,
        "SendTestEvent",
        pb.SendTestEventRequest(subscription_id=created.subscription.id, event_type="nope"),
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        api.call,
        "SendTestEvent",
        pb.SendTestEventRequest(subscription_id="sub_x"),
    )


def test_publish_event_goes_through_kafka(pipeline: Pipeline, receiver: Receiver) -> None:
    api = pipeline.api
    created = api.create(url=receiver.url("/published"))
    event = events_pb2.DomainEvent(id="pub-1", type="invoice.paid", data=b'{"invoice_id": "inv_9"}')
    reply = api.call("PublishEvent", pb.PublishEventRequest(event=event))
    assert reply.topic == pipeline.topic and reply.event_id == "pub-1" and reply.offset >= 0
    [request] = receiver.wait_for("/published", 1)
    payload = Webhook(created.secret).verify(
        request.body, {k.lower(): v for k, v in request.headers.items()}
    )
    assert payload["data"] == {"invoice_id": "inv_9"} and payload["tenant"] == "acme"

    for bad, field in [
        (events_pb2.DomainEvent(type="invoice.paid", data=b"{}"), "event.id"),
        (events_pb2.DomainEvent(id="x", type="unknown.type", data=b"{}"), "event.type"),
        (events_pb2.DomainEvent(id="x", type="invoice.paid", data=b"{nope"), "event.data"),
        (events_pb2.DomainEvent(id="x", type="lead.created", data=b'{"lead_id": 1}'), "event.data"),
    ]:
        details = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            api.call,
            "PublishEvent",
            pb.PublishEventRequest(event=bad),
        )
        assert field in details["violations"], details
    other = events_pb2.DomainEvent(id="x", type="invoice.paid", tenant="globex", data=b"{}")
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        api.call,
        "PublishEvent",
        pb.PublishEventRequest(event=other),
    )


def test_https_delivery_verifies_the_endpoint_certificate(
    make_pipeline: Any, tmp_path: Path
) -> None:
    ca = cert("test-ca", None, ca=True)
    server = cert("localhost", ca)
    (tmp_path / "ca.pem").write_bytes(pem(ca[0]))
    (tmp_path / "srv.pem").write_bytes(pem(server[0]))
    (tmp_path / "srv.key").write_bytes(key_pem(server[1]))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    receiver = Receiver(ssl_context=context).start()
    try:
        trusting = make_pipeline(
            WEBHOOKS_ALLOW_HTTP="false", WEBHOOKS_DELIVERY_CA_FILE=str(tmp_path / "ca.pem")
        )
        created = trusting.api.create(url=receiver.url("/tls"))
        assert created.subscription.url.startswith("https://localhost:")
        trusting.send(structured(cloud_event("person.created", {"tls": True})))
        [request] = receiver.wait_for("/tls", 1)
        assert json.loads(request.body)["data"] == {"tls": True}
        # Without the CA the certificate is not trusted: a TLS error, nothing received.
        reply = trusting.api.call(
            "SendTestEvent", pb.SendTestEventRequest(subscription_id=created.subscription.id)
        )
        assert reply.delivery.status == E.DELIVERY_STATUS_SUCCEEDED
    finally:
        receiver.stop()


def test_untrusted_certificate_is_a_tls_error(make_pipeline: Any, tmp_path: Path) -> None:
    ca = cert("test-ca", None, ca=True)
    server = cert("localhost", ca)
    (tmp_path / "srv.pem").write_bytes(pem(server[0]))
    (tmp_path / "srv.key").write_bytes(key_pem(server[1]))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    receiver = Receiver(ssl_context=context).start()
    try:
        pipeline = make_pipeline(WEBHOOKS_ALLOW_HTTP="false")
        created = pipeline.api.create(url=receiver.url("/untrusted"))
        reply = pipeline.api.call(
            "SendTestEvent", pb.SendTestEventRequest(subscription_id=created.subscription.id)
        )
        assert reply.delivery.attempts[0].error_kind == E.ERROR_KIND_TLS
        assert receiver.at("/untrusted") == []
    finally:
        receiver.stop()
