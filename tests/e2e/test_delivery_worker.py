"""The delivery worker process: attempts are made there, and none is lost when it dies."""

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.pipeline_support import (
    Pipeline,
    Receiver,
    Reply,
    cloud_event,
    structured,
    wait_all_delivered,
)
from webhooks.v1 import events_pb2


def _worker_pid(pipeline: Pipeline, timeout: float = 10.0) -> int:
    assert pipeline.api.app is not None and pipeline.api.app.delivery_worker is not None
    deadline = time.monotonic() + timeout
    while (pid := pipeline.api.app.delivery_worker.pid) is None:
        assert time.monotonic() < deadline, "no delivery worker started"
        time.sleep(0.05)
    return pid


def test_attempts_are_made_by_a_child_process(make_pipeline: Any, receiver: Receiver) -> None:
    pipeline = make_pipeline(WEBHOOKS_DELIVERY_WORKERS="1")
    pipeline.api.create(url=receiver.url("/hook"))
    pipeline.send(structured(cloud_event("person.created", {"n": 1})))
    request = receiver.wait_for("/hook", 1)[0]
    assert request.headers["webhook-signature"].startswith("v1,")
    pid = _worker_pid(pipeline)
    assert pid != os.getpid()
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"service.engine.worker" in command


def test_with_no_worker_the_service_process_makes_the_attempts(
    make_pipeline: Any, receiver: Receiver
) -> None:
    pipeline = make_pipeline(WEBHOOKS_DELIVERY_WORKERS="0")
    pipeline.api.create(url=receiver.url("/inline"))
    pipeline.send(structured(cloud_event("person.created", {"n": 1})))
    request = receiver.wait_for("/inline", 1)[0]
    assert request.headers["webhook-signature"].startswith("v1,")
    assert pipeline.api.app is not None and pipeline.api.app.delivery_worker is None


def test_a_killed_worker_loses_no_delivery(make_pipeline: Any, receiver: Receiver) -> None:
    pipeline = make_pipeline(WEBHOOKS_DELIVERY_WORKERS="1")
    # Every delivery's first answer is slow, so all of them are in flight at the kill. Its
    # status (503) is never read: had the worker lived, the attempts would show it.
    url = receiver.reply_each("/slow", Reply(503, delay=3.0), Reply())
    pipeline.api.create(url=url)
    events = [cloud_event("person.created", {"n": n}) for n in range(5)]
    pipeline.send(*[structured(e) for e in events])
    receiver.wait_for("/slow", 5)
    killed = _worker_pid(pipeline)
    os.kill(killed, signal.SIGKILL)

    ids = [e["id"] for e in events]
    webhook_ids = wait_all_delivered(receiver, "/slow", ids, timeout=30)
    # Sent again under the same webhook-id, by a new worker; the lost attempt left no record.
    assert all(len(webhook_ids[i]) == 1 for i in ids)
    assert _worker_pid(pipeline) != killed
    for (delivery_id,) in webhook_ids.values():
        delivery = pipeline.wait_status(delivery_id, events_pb2.DELIVERY_STATUS_SUCCEEDED)
        assert [a.http_status for a in delivery.attempts] == [200]


def test_attempts_spread_evenly_over_several_workers(
    make_pipeline: Any, receiver: Receiver
) -> None:
    pipeline = make_pipeline(WEBHOOKS_DELIVERY_WORKERS="2")
    # Slow answers keep attempts in flight, so the least busy worker is the other one.
    pipeline.api.create(url=receiver.reply("/two", Reply(delay=0.05)))
    events = [cloud_event("person.created", {"n": n}) for n in range(60)]
    pipeline.send(*[structured(e) for e in events])
    wait_all_delivered(receiver, "/two", [e["id"] for e in events], timeout=30)
    assert pipeline.api.app is not None and pipeline.api.app.delivery_worker is not None
    workers = pipeline.api.app.delivery_worker.workers
    pids = {worker.pid for worker in workers}
    assert len(pids) == 2 and None not in pids and os.getpid() not in pids
    for pid in pids:
        assert b"service.engine.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    made = [worker.requested for worker in workers]
    assert sum(made) == 60 and min(made) >= 20, made
