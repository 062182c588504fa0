"""What an independent attack run got through, each shut and checked against a real service:
a key reading or injecting data beyond its scopes, a stolen request_id, poisoned stored values,
hostile schemas, page tokens, requests and response bodies (README "Security")."""

import asyncio
import base64
import ipaddress
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from kafka import topics
from kafka.codec import encode_attempt, header
from service.domain.outcomes import AttemptResult, ErrorKind, Outcome, Trigger
from service.domain.pipeline import Job, RecordedAttempt, Target
from service.domain.signing_secrets import MAX_LIVE_SECRETS
from service.engine.attempts import AttemptMaker, AttemptSettings
from service.engine.http import RESPONSE_BODY_LIMIT, HttpSender
from tests.pipeline_support import Pipeline, Receiver, cloud_event, read_topic, structured
from tests.support import KEYS, Api, api_store, expect_error
from webhooks.v1 import events_pb2
from webhooks.v1 import webhook_service_pb2 as pb


def _dead_letters(pipeline: Pipeline, count: int) -> list[Any]:
    def mine(found: list[Any]) -> list[Any]:
        return [r for r in found if header(r.headers, "dlq-topic") == pipeline.topic]

    return mine(
        read_topic(pipeline.bootstrap, topics.DEAD_LETTER_TOPIC, lambda r: len(mine(r)) >= count)
    )


def test_an_event_id_reused_for_other_content_is_refused_and_never_delivered(
    make_pipeline: Any, receiver: Receiver
) -> None:
    pipeline: Pipeline = make_pipeline()
    api = pipeline.api
    api.create(url=receiver.url("/leads"), event_types=["lead.created"])  # alice may
    mine = api.create(as_="bob", url=receiver.url("/bob"), event_types=["person.created"])
    lead = cloud_event("lead.created", {"lead_id": "lead-only-for-leads-scope"})
    pipeline.send(structured(lead))
    receiver.wait_for("/leads", 1)
    # Bob (webhooks:write, no leads:subscribe) finds the event's id through ListDeliveries
    # (once stored: a delivery is sent while its ingest transaction runs)...
    deadline = time.monotonic() + 10
    while not (
        listed := api.call(
            "ListDeliveries", pb.ListDeliveriesRequest(event_type="lead.created"), as_="bob"
        ).deliveries
    ):
        assert time.monotonic() < deadline, "the delivery was never stored"
        time.sleep(0.05)
    [seen] = listed
    assert seen.event_id == lead["id"]
    # ...and publishes his own type under it: refused at once over gRPC,
    published = events_pb2.DomainEvent(id=lead["id"], type="person.created", data=b"{}")
    details = expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        api.call,
        "PublishEvent",
        pb.PublishEventRequest(event=published),
        as_="bob",
    )
    assert details["reason"] == "EVENT_ID_REUSED" and details["metadata"]["field"] == "event.id"
    # dead-lettered from Kafka, as is a second event under one id within a batch; an exact
    # copy (a producer's retry) is neither refused nor delivered again.
    reused = cloud_event("person.created", {"mine": 1}, event_id=lead["id"])
    twice = [
        cloud_event("person.created", {"copy": "first"}, event_id="twice"),
        cloud_event("invoice.paid", {"copy": "second"}, event_id="twice"),
    ]
    marker = cloud_event("person.created", {"copy": "marker"})
    pipeline.send(*[(b"k", structured(e)[1], structured(e)[2]) for e in (reused, *twice, lead)])
    pipeline.send(structured(marker))

    dead = _dead_letters(pipeline, 2)
    assert sorted(header(r.headers, "dlq-reason") or "" for r in dead) == ["EVENT_ID_REUSED"] * 2
    assert sorted(json.loads(r.value)["id"] for r in dead) == sorted([lead["id"], "twice"])
    bob_got = receiver.wait_for("/bob", 2)
    time.sleep(0.5)
    assert sorted(r.json["data"].get("copy", "") for r in receiver.at("/bob")) == [
        "first",
        "marker",
    ]
    assert len(receiver.at("/leads")) == 1  # the copy delivered nothing again
    assert all(r.json["type"] == "person.created" for r in bob_got)
    # Nothing of Bob's points at the lead event, so no retry of his can send it.
    bobs = api.call(
        "ListDeliveries",
        pb.ListDeliveriesRequest(subscription_id=mine.subscription.id),
        as_="bob",
    ).deliveries
    assert lead["id"] not in {d.event_id for d in bobs}
    for delivery in bobs:
        api.call("RetryDelivery", pb.RetryDeliveryRequest(id=delivery.id), as_="bob")
    receiver.wait_for("/bob", 4)
    assert all("lead-only" not in r.body.decode() for r in receiver.at("/bob"))


def test_publishing_needs_the_types_scope_and_fits_the_size_cap(make_pipeline: Any) -> None:
    pipeline: Pipeline = make_pipeline(WEBHOOKS_MAX_EVENT_BYTES="2048")
    api = pipeline.api
    lead = events_pb2.DomainEvent(id="l-1", type="lead.created", data=b'{"lead_id": "l"}')
    details = expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        api.call,
        "PublishEvent",
        pb.PublishEventRequest(event=lead),
        as_="bob",
    )
    assert details["reason"] == "MISSING_SCOPE"
    assert details["metadata"] == {"scope": "leads:subscribe"}
    deadline = time.monotonic() + 15
    while True:  # the service's producer connects in the background after start
        try:
            assert api.call("PublishEvent", pb.PublishEventRequest(event=lead)).event_id == "l-1"
            break
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)

    big = events_pb2.DomainEvent(
        id="big", type="person.created", data=json.dumps({"pad": "x" * 2100}).encode()
    )
    request = pb.PublishEventRequest(event=big)
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.call, "PublishEvent", request)
    assert "2048" in details["violations"]["event.data"]


def test_a_request_id_replays_only_for_the_principal_that_sent_it(api: Api) -> None:
    request = pb.CreateSubscriptionRequest(
        subscription=pb.Subscription(name="alices", url="https://hooks.example.com/a"),
        request_id="6a3c1d5e-0000-4000-8000-000000000001",
    )
    first = api.call("CreateSubscription", request, as_="alice")
    assert api.call("CreateSubscription", request, as_="alice").secret == first.secret
    for thief in ("bob", "admin"):
        details = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, api.call, "CreateSubscription", request, as_=thief
        )
        assert details["reason"] == "REQUEST_ID_REUSED"
        assert first.secret not in json.dumps(details)


def test_header_values_must_be_rfc9110_ascii_and_iris_become_uris(api: Api) -> None:
    for value in ("José", " padded", "tab\tend\t", "", "a\x7fb"):
        details = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, api.create, headers={"X-Name": value}
        )
        assert "RFC 9110" in details["violations"]["subscription.headers['X-Name']"]
    assert api.create(headers={"X-Name": "Jos\\u00e9 a\tb"}).subscription.headers

    created = api.create(url="https://bücher.example/café?q=é#")
    assert created.subscription.url == "https://xn--bcher-kva.example/caf%C3%A9?q=%C3%A9"
    # Full-width digits and ideographic dots name the same address as their ASCII forms.
    fullwidth = "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in "10.0.0.1")
    for literal in (
        f"https://{fullwidth}/",
        "https://10\u30020\u30020\u30021/",
        "https://\u2460\u24ea.0.0.1/",
    ):
        details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.create, url=literal)
        assert details["violations"]["subscription.url"], literal


def _attempt_settings() -> AttemptSettings:
    return AttemptSettings(
        allow_http=True,
        allow_cidrs=(ipaddress.ip_network("127.0.0.0/8"),),
        timeout_seconds=5,
        ca_file=None,
        schedule=(0.1, 0.1),
        jitter=0,
        disable_after=timedelta(days=5),
        audit_topic="audit",
        encode_audit=encode_attempt,
    )


def _job(attempts_made: int) -> Job:
    return Job(
        delivery_id="msg_1",
        subscription_id="sub_1",
        tenant="acme",
        event_id="e1",
        event_type="person.created",
        body=b"{}",
        attempts_made=attempts_made,
        trigger=Trigger.SCHEDULED,
    )


def _target(url: str, headers: dict[str, str]) -> Target:
    return Target("sub_1", "acme", url, headers, (b"k" * 32,), 0, True, None)


def test_a_request_that_cannot_be_made_is_a_failed_attempt_on_the_schedule(
    receiver: Receiver,
) -> None:
    """Values stored before the create-time checks (a non-ASCII header or path) end FAILED
    after the schedule, never an endless loop of unrecorded attempts."""

    async def run() -> list[RecordedAttempt]:
        maker = AttemptMaker(_attempt_settings())
        try:
            return [
                await maker.make(_job(n), _target(url, headers))
                for n, (url, headers) in enumerate(
                    [
                        (receiver.url("/ok"), {"X-Name": "José"}),
                        (receiver.url("/café"), {}),
                        (receiver.url("/ok"), {"X-Name": "José"}),
                    ]
                )
            ]
        finally:
            await maker.close()

    attempts = [r.attempt for r in asyncio.run(run())]
    assert [a.error_kind for a in attempts] == [ErrorKind.INTERNAL] * 3
    assert [a.outcome for a in attempts] == [
        Outcome.RETRY_SCHEDULED,
        Outcome.RETRY_SCHEDULED,
        Outcome.FAILED,
    ]
    assert "UnicodeEncodeError" in attempts[0].error_message
    assert not receiver.requests


def test_a_huge_or_endless_response_body_is_cut_off_at_the_read_limit() -> None:
    sent: list[int] = []
    server = socket.create_server(("127.0.0.1", 0))

    def endless() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
            chunk, total = b"x" * 65536, 0
            try:
                while total < 1 << 30:
                    conn.sendall(chunk)
                    total += len(chunk)
            except OSError:
                pass  # the client closed the connection
            sent.append(total)

    thread = threading.Thread(target=endless, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/big"

    async def run() -> AttemptResult:
        sender = HttpSender(
            allow_http=True, allow_cidrs=[ipaddress.ip_network("127.0.0.0/8")], timeout_seconds=30
        )
        try:
            return await sender.send(url, {}, b"{}")
        finally:
            await sender.close()

    result = asyncio.run(run())
    thread.join(30)
    server.close()
    assert result.http_status == 200 and result.error_kind == ErrorKind.NONE
    assert len(result.response_body) == RESPONSE_BODY_LIMIT
    # Socket buffers hold a few MB at most; reading to the end would have taken 1 GiB.
    assert sent and sent[0] < 64 * 1024 * 1024


def _create_type(api: Api, name: str, schema: object) -> Any:
    request = pb.CreateEventTypeRequest(
        event_type=pb.EventType(name=name, json_schema=json.dumps(schema))
    )
    return api.call("CreateEventType", request, as_="operator")


def test_schema_regexes_run_in_linear_time_and_unusable_schemas_are_refused(api: Api) -> None:
    _create_type(
        api, "redos.check", {"properties": {"s": {"type": "string", "pattern": "^(a|aa)+$"}}}
    )
    # Exponential for a backtracking engine (37 characters stalled every RPC for 1.2-1.8 s):
    # 5,000 would never finish within the call's 10 s deadline.
    hostile = events_pb2.DomainEvent(
        id="r1", type="redos.check", data=json.dumps({"s": "a" * 5000 + "b"}).encode()
    )
    details = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.call,
        "PublishEvent",
        pb.PublishEventRequest(event=hostile),
    )
    assert "does not match" in details["violations"]["event.data"]
    for schema, problem in [
        ({"pattern": "(?=a)b"}, "cannot be used"),  # lookahead: not linear, so not allowed
        ({"$ref": "#/$defs/missing"}, "cannot be used"),
        ({"$ref": "https://schemas.example.com/person.json"}, "cannot be used"),
        ({"type": "strin"}, "not a valid JSON Schema"),
    ]:
        details = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, _create_type, api, "bad.schema", schema
        )
        assert problem in details["violations"]["event_type.json_schema"], schema


def test_malformed_requests_and_tokens_are_invalid_arguments(api: Api) -> None:
    # A page token of deeply nested JSON once raised RecursionError: INTERNAL.
    nested = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    for method, request in [
        ("ListSubscriptions", pb.ListSubscriptionsRequest(page_token=nested)),
        ("ListDeliveries", pb.ListDeliveriesRequest(page_token=nested)),
        ("ListEventTypes", pb.ListEventTypesRequest(page_token=nested)),
    ]:
        details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.call, method, request)
        assert "page_token" in details["violations"]
    # Invalid UTF-8 in a string field: protobuf refuses it while grpc deserializes (UNKNOWN).
    body = pb.CreateSubscriptionRequest(
        subscription=pb.Subscription(name="XX", url="https://hooks.example.com/")
    ).SerializeToString()
    raw = api.channel.unary_unary(
        "/webhooks.v1.WebhookService/CreateSubscription",
        request_serializer=None,
        response_deserializer=pb.CreateSubscriptionResponse.FromString,
    )
    details = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        raw,
        body.replace(b"XX", b"\xff\xfe"),
        metadata=[("authorization", f"Bearer {KEYS['alice']}")],
        timeout=10,
    )
    assert details["reason"] == "MALFORMED_REQUEST"
    assert "UTF-8" in details["violations"]["request"]
    # JSON in another encoding than UTF-8 reaches no subscriber.
    for data in ('{"a": 1}'.encode("utf-16"), b'\xef\xbb\xbf{"a": 1}'):
        event = events_pb2.DomainEvent(id="enc", type="person.created", data=data)
        details = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            api.call,
            "PublishEvent",
            pb.PublishEventRequest(event=event),
        )
        assert "event.data" in details["violations"]


def test_at_most_ten_secrets_sign_at_once(api: Api) -> None:
    sub_id = api.create().subscription.id
    rotate = pb.RotateSubscriptionSecretRequest(id=sub_id)
    for _ in range(MAX_LIVE_SECRETS - 1):
        api.call("RotateSubscriptionSecret", rotate)
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, api.call, "RotateSubscriptionSecret", rotate
    )
    assert details["reason"] == "TOO_MANY_LIVE_SECRETS"
    assert details["metadata"] == {"live_secrets": "10", "max": "10"}
    assert len(api_store(api).live_secrets(sub_id)) == MAX_LIVE_SECRETS
    # Revoking the older ones is always possible, and makes room again.
    now = pb.RotateSubscriptionSecretRequest(id=sub_id, overlap=duration_pb2.Duration(seconds=0))
    api.call("RotateSubscriptionSecret", now)
    api.call("RotateSubscriptionSecret", rotate)
    assert len(api_store(api).live_secrets(sub_id)) == 2


def test_test_events_obey_the_endpoints_limits_and_the_creator_rule(
    make_pipeline: Any, receiver: Receiver
) -> None:
    pipeline: Pipeline = make_pipeline()
    api = pipeline.api
    limited = api.create(url=receiver.url("/limited"), rate_limit_per_second=2).subscription
    send = pb.SendTestEventRequest(subscription_id=limited.id)
    # 60 calls at once once made 60 POSTs in 0.22 s at 1/s: now the lane spaces them.
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: api.call("SendTestEvent", send), range(6)))
    assert all(r.delivery.test for r in replies)
    requests = receiver.wait_for("/limited", 6)
    # 6 at 2/s with a burst of 1 go out over 2.5 s; unlimited, within ms. Arrivals bunch after
    # a stall on a loaded machine, which shortens the span by as much.
    assert requests[-1].at - requests[0].at >= 1.5

    # Bob is a writer of the same tenant, but not the subscription's creator.
    failed = api.call("SendTestEvent", send).delivery
    for method, request in [
        ("SendTestEvent", send),
        ("RetryDelivery", pb.RetryDeliveryRequest(id=failed.id)),
        (
            "RecoverDeliveries",
            pb.RecoverDeliveriesRequest(subscription_id=limited.id, since=failed.create_time),
        ),
    ]:
        details = expect_error(
            grpc.StatusCode.PERMISSION_DENIED, api.call, method, request, as_="bob"
        )
        assert details["reason"] == "NOT_CREATOR", method
        api.call(method, request, as_="admin")

    disabled = api.create(url=receiver.url("/off"), enabled=False).subscription
    details = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        api.call,
        "SendTestEvent",
        pb.SendTestEventRequest(subscription_id=disabled.id),
    )
    assert details["reason"] == "SUBSCRIPTION_DISABLED"
    assert not receiver.at("/off")


def test_an_exact_subscription_stops_when_its_type_gains_a_scope(
    make_pipeline: Any, receiver: Receiver
) -> None:
    pipeline: Pipeline = make_pipeline()
    api = pipeline.api
    api.create(as_="bob", url=receiver.url("/exact"), event_types=["invoice.paid"])
    api.create(as_="admin", url=receiver.url("/admin"), event_types=["invoice.paid"])
    update = pb.UpdateEventTypeRequest(
        event_type=pb.EventType(name="invoice.paid", required_scope="billing:subscribe"),
        update_mask=field_mask_pb2.FieldMask(paths=["required_scope"]),
    )
    api.call("UpdateEventType", update, as_="operator")  # this test's own database
    time.sleep(0.2)  # the service reloads its catalog at once, in the background
    pipeline.send(structured(cloud_event("invoice.paid", {"amount": 1})))
    receiver.wait_for("/admin", 1)  # an admin's subscription holds every subscribe scope
    time.sleep(0.5)
    assert not receiver.at("/exact")


def test_header_values_are_write_only_and_stay_with_their_host(api: Api) -> None:
    credentials = {
        name: f"value-of-{name}"
        for name in ("X-Credential", "X-Passphrase", "Cookie2", "X-Jwt", "X-Bearer", "X-Hmac")
    }
    created = api.create(
        url="https://hooks.example.com/in",
        headers={**credentials, "X-Team": "crm"},
        visible_headers=["X-Team"],
    ).subscription
    for shown in (
        created,
        api.call(
            "GetSubscription", pb.GetSubscriptionRequest(id=created.id), as_="reader"
        ).subscription,
        *api.call("ListSubscriptions", pb.ListSubscriptionsRequest(), as_="reader").subscriptions,
    ):
        assert dict(shown.headers) == {**dict.fromkeys(credentials, "<redacted>"), "X-Team": "crm"}
        assert "value-of" not in str(shown)
    details = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.create,
        headers={"Authorization": "Bearer t"},
        visible_headers=["Authorization"],
    )
    assert "write-only" in details["violations"]["subscription.visible_headers['Authorization']"]

    def update(paths: list[str], **fields: Any) -> Any:
        request = pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(id=created.id, **fields),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
        return api.call("UpdateSubscription", request)

    # Another host: the stored credentials do not follow unless given again...
    moves: list[tuple[list[str], dict[str, Any]]] = [
        (["url"], {"url": "https://attacker.example.net/in"}),
        (
            ["url", "headers"],
            {"url": "https://attacker.example.net/in", "headers": dict(created.headers)},
        ),
    ]
    for paths, fields in moves:
        details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, update, paths, **fields)
        assert "X-Credential" in details["violations"]["subscription.headers"]
    stored = api_store(api).get("acme", created.id).spec
    assert (
        stored.url == "https://hooks.example.com/in" and stored.headers["X-Jwt"] == "value-of-X-Jwt"
    )
    # ...while the same host keeps them, and given again they move.
    update(["url"], url="https://hooks.example.com/other")
    moved = update(
        ["url", "headers"],
        url="https://new.example.net/in",
        headers={"X-Jwt": "fresh", "X-Team": "crm"},
    ).subscription
    assert dict(moved.headers) == {"X-Jwt": "<redacted>", "X-Team": "crm"}
    assert api_store(api).get("acme", created.id).spec.headers == {
        "X-Jwt": "fresh",
        "X-Team": "crm",
    }
