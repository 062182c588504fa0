"""Targets and fan-out views are cached until their subscription changes: a change made
through one instance reaches another instance's caches within a second (the change log),
so after that no event goes where the subscription no longer points."""

import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from kafka.embedded import free_port
from tests.pipeline_support import (
    Broker,
    Receiver,
    new_topic,
    pipeline_env,
    stream_events,
    wait_all_delivered,
)
from tests.support import KEYS, ServiceProcess, process_env, process_metric
from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _attempts(process: ServiceProcess) -> float:
    return process_metric(process, "webhooks_delivery_attempts_total{")


def test_another_instances_change_reaches_the_cached_targets_within_a_second(
    tmp_path: Path, broker: Broker, receiver: Receiver, postgres_url: str
) -> None:
    topic = new_topic(broker.bootstrap)
    env = process_env(tmp_path, postgres_url, **pipeline_env(broker, topic))
    a, b = (
        ServiceProcess(
            env
            | {
                "WEBHOOKS_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
                "WEBHOOKS_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
            },
            tmp_path / f"{name}.log",
        )
        for name in ("a", "b")
    )
    try:
        a.start()
        b.start()
        sub = a.subscribe(receiver.url("/old"), event_types=["person.created"]).subscription
        # Until both sent (the group may give one instance every partition at first): each
        # has the target cached, and the tenant's subscriptions.
        warm: list[str] = []
        deadline = time.monotonic() + 60
        while not (_attempts(a) > 0 and _attempts(b) > 0):
            assert time.monotonic() < deadline, "one instance never sent"
            more = [f"warm-{len(warm) + n:03d}" for n in range(20)]
            stream_events(broker.bootstrap, topic, more, pause=0.02).join(60)
            warm += more
            wait_all_delivered(receiver, "/old", warm, timeout=60)

        with grpc.insecure_channel(f"127.0.0.1:{a.port}") as channel:
            stub = pb_grpc.WebhookServiceStub(channel)
            auth = (("authorization", f"Bearer {KEYS['alice']}"),)
            stub.UpdateSubscription(
                pb.UpdateSubscriptionRequest(
                    subscription=pb.Subscription(id=sub.id, url=receiver.url("/new")),
                    update_mask=field_mask_pb2.FieldMask(paths=["url"]),
                ),
                metadata=auth,
                timeout=10,
            )
            time.sleep(1.0)
            moved = [f"moved-{n:03d}" for n in range(60)]
            stream_events(broker.bootstrap, topic, moved, pause=0.02).join(60)
            wait_all_delivered(receiver, "/new", moved, timeout=60)

            stub.DeleteSubscription(
                pb.DeleteSubscriptionRequest(id=sub.id), metadata=auth, timeout=10
            )
            time.sleep(1.0)
            gone = [f"gone-{n:03d}" for n in range(40)]
            stream_events(broker.bootstrap, topic, gone, pause=0.02).join(60)
            time.sleep(2.0)
    finally:
        a.stop()
        b.stop()
    old = {r.json["id"] for r in receiver.at("/old")}
    new = {r.json["id"] for r in receiver.at("/new")}
    assert not old & set(moved), "an instance sent to the URL the subscription left"
    assert not (old | new) & set(gone), "an instance sent for a deleted subscription"
