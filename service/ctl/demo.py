"""`webhookctl demo`: a local receiver, a subscription to it, a few published events, and the
deliveries with their verified signatures, end to end against a running service."""

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid

from google.protobuf.message import Message

from service.ctl import output
from service.demo_receiver import Delivery, DemoReceiver
from webhooks.v1 import events_pb2
from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc


class DemoFailed(Exception):
    """The demo did not see every delivery arrive verified."""


def run_demo(stub: pb_grpc.WebhookServiceStub, args: argparse.Namespace) -> tuple[Message, str]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    receiver = DemoReceiver(on_delivery=lambda d: _say(f"  received {d.webhook_id}"))
    runner, port = asyncio.run_coroutine_threadsafe(receiver.start("127.0.0.1", 0), loop).result(10)
    subscription_id = ""
    try:
        created = stub.CreateSubscription(
            pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(
                    name=f"demo-{uuid.uuid4().hex[:6]}",
                    url=f"http://127.0.0.1:{port}/demo",
                    event_types=[args.event_type],
                ),
                request_id=str(uuid.uuid4()),
            )
        )
        subscription_id = created.subscription.id
        receiver.secrets = [created.secret]
        _say(f"receiver on http://127.0.0.1:{port}/demo, subscription {subscription_id}")
        for n in range(args.count):
            event = events_pb2.DomainEvent(
                id=str(uuid.uuid4()),
                type=args.event_type,
                source="webhookctl-demo",
                data=json.dumps({"demo": n + 1}).encode(),
            )
            event.time.GetCurrentTime()
            published = stub.PublishEvent(pb.PublishEventRequest(event=event))
            _say(f"published {published.event_id} ({args.event_type})")
        deadline = time.monotonic() + args.timeout
        while len(receiver.received) < args.count and time.monotonic() < deadline:
            time.sleep(0.1)
        deliveries = _settled(stub, subscription_id, args.count, deadline)
        text = _report(deliveries, receiver.received)
        verified = [d for d in receiver.received if d.verified]
        if len(verified) < args.count:
            raise DemoFailed(
                f"{len(verified)} of {args.count} deliveries arrived verified "
                f"within {args.timeout:.0f} s\n{text}"
            )
        return deliveries, text
    finally:
        if subscription_id and not args.keep:
            stub.DeleteSubscription(pb.DeleteSubscriptionRequest(id=subscription_id))
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _settled(
    stub: pb_grpc.WebhookServiceStub, subscription_id: str, count: int, deadline: float
) -> pb.ListDeliveriesResponse:
    """The subscription's deliveries once `count` of them succeeded (or the deadline passed):
    the receiver sees a request before the service has recorded its outcome."""
    while True:
        listed = stub.ListDeliveries(pb.ListDeliveriesRequest(subscription_id=subscription_id))
        done = [d for d in listed.deliveries if d.status == events_pb2.DELIVERY_STATUS_SUCCEEDED]
        if len(done) >= count or time.monotonic() > deadline:
            return listed
        time.sleep(0.1)


def _report(listed: pb.ListDeliveriesResponse, received: list[Delivery]) -> str:
    by_id = {d.webhook_id: d for d in received}
    rows = []
    for d in listed.deliveries:
        got = by_id.get(d.id)
        signature = "not received" if got is None else ("verified" if got.verified else "INVALID")
        rows.append(
            [
                d.id,
                d.event_type,
                output.enum_name(events_pb2.DeliveryStatus.Name(d.status), "DELIVERY_STATUS_"),
                d.attempt_count,
                d.last_http_status or "",
                signature,
            ]
        )
    return output.table(["DELIVERY", "EVENT TYPE", "STATUS", "ATTEMPTS", "HTTP", "SIGNATURE"], rows)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
