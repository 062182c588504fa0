"""Payload formats over the running pipeline: each subscription gets its own body shape, the
signature covers the body sent, and a template's send time is each attempt's own."""

import time
from typing import Any

import grpc
from standardwebhooks.webhooks import Webhook

from tests.pipeline_support import Pipeline, Receiver, Reply, cloud_event, structured
from tests.support import expect_error
from webhooks.v1 import webhook_service_pb2 as pb

SEED_003 = '{"type": "{{type}}", "body": "{{data}}", "sent_at": "{{sent_at}}"}'


def _create(pipeline: Pipeline, url: str, **fields: Any) -> Any:
    return pipeline.api.create(url=url, event_types=["person.created"], **fields)


def test_each_subscription_gets_its_own_format(pipeline: Pipeline, receiver: Receiver) -> None:
    made = {
        "/envelope": _create(pipeline, receiver.url("/envelope")),
        "/cloudevents": _create(
            pipeline, receiver.url("/cloudevents"), payload_format=pb.PAYLOAD_FORMAT_CLOUDEVENTS
        ),
        "/data": _create(pipeline, receiver.url("/data"), payload_format=pb.PAYLOAD_FORMAT_DATA),
        "/seed-003": _create(
            pipeline,
            receiver.url("/seed-003"),
            payload_format=pb.PAYLOAD_FORMAT_TEMPLATE,
            payload_template=SEED_003,
        ),
    }
    event = cloud_event("person.created", {"name": "Ann"})
    before = int(time.time())
    pipeline.send(structured(event))
    got = {path: receiver.wait_for(path, 1)[0] for path in made}
    after = int(time.time()) + 1
    for path, request in got.items():
        # Signed over exactly the bytes sent, whatever their shape.
        Webhook(made[path].secret).verify(request.body, request.headers)
    assert got["/envelope"].json["data"] == {"name": "Ann"}
    assert got["/envelope"].headers["Content-Type"] == "application/json"
    cloud = got["/cloudevents"]
    assert cloud.headers["Content-Type"] == "application/cloudevents+json"
    assert cloud.json["specversion"] == "1.0" and cloud.json["id"] == event["id"]
    assert cloud.json["tenant"] == "acme" and cloud.json["data"] == {"name": "Ann"}
    assert got["/data"].json == {"name": "Ann"}
    seed = got["/seed-003"].json
    assert seed["type"] == "person.created" and seed["body"] == {"name": "Ann"}
    assert before <= seed["sent_at"] <= after
    # Reads show the format and the template.
    shown = pipeline.api.call(
        "GetSubscription", pb.GetSubscriptionRequest(id=made["/seed-003"].subscription.id)
    ).subscription
    assert shown.payload_format == pb.PAYLOAD_FORMAT_TEMPLATE
    assert shown.payload_template == SEED_003


def test_a_retried_template_delivery_carries_its_own_send_time(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    url = receiver.reply("/later", Reply(500), Reply(200))
    created = _create(
        pipeline, url, payload_format=pb.PAYLOAD_FORMAT_TEMPLATE, payload_template=SEED_003
    )
    pipeline.send(structured(cloud_event("person.created", {"n": 1})))
    first, second = receiver.wait_for("/later", 2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    for request in (first, second):
        Webhook(created.secret).verify(request.body, request.headers)
    assert first.json["sent_at"] <= second.json["sent_at"]
    assert first.json["body"] == second.json["body"] == {"n": 1}


def test_templates_are_checked_on_create_and_update(pipeline: Pipeline, receiver: Receiver) -> None:
    api = pipeline.api
    details = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        _create,
        pipeline,
        receiver.url("/x"),
        payload_format=pb.PAYLOAD_FORMAT_TEMPLATE,
        payload_template='{"event": {"kind": "{{kind}}"}}',
    )
    assert (
        "at $.event.kind: unknown placeholder {{kind}}"
        in (details["violations"]["subscription.payload_template"])
    )
    details = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, _create, pipeline, receiver.url("/x"), payload_format=99
    )
    assert details["reason"] == "UNKNOWN_ENUM_VALUE"
    sub = _create(pipeline, receiver.url("/switch")).subscription

    def update(*paths: str, **fields: Any) -> Any:
        request = pb.UpdateSubscriptionRequest(subscription=pb.Subscription(id=sub.id, **fields))
        request.update_mask.paths.extend(paths)
        return api.call("UpdateSubscription", request)

    # TEMPLATE without a template is refused even when only the format is named.
    details = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        update,
        "payload_format",
        payload_format=pb.PAYLOAD_FORMAT_TEMPLATE,
    )
    assert "subscription.payload_template" in details["violations"]
    changed = update(
        "payload_format",
        "payload_template",
        payload_format=pb.PAYLOAD_FORMAT_TEMPLATE,
        payload_template='{"id": "{{id}}"}',
    ).subscription
    assert changed.payload_template == '{"id": "{{id}}"}'
    pipeline.send(structured(event := cloud_event("person.created", {})))
    assert receiver.wait_for("/switch", 1)[0].json == {"id": event["id"]}
    # Back to the envelope: the template goes with it.
    back = update("payload_format", payload_format=pb.PAYLOAD_FORMAT_ENVELOPE).subscription
    assert back.payload_format in (pb.PAYLOAD_FORMAT_UNSPECIFIED, pb.PAYLOAD_FORMAT_ENVELOPE)
    assert back.payload_template == ""
