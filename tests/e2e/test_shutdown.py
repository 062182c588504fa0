"""Shutdown in order: gRPC stops first (calls in flight finish, new ones get UNAVAILABLE),
and no delivery worker outlives the service or starts during shutdown."""

import asyncio
import concurrent.futures
import signal
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from kafka.codec import encode_attempt
from service.domain.outcomes import Trigger
from service.domain.pipeline import Job, Target
from service.engine.attempts import AttemptSettings
from service.engine.worker import DeliveryWorker
from service.errors import Unavailable
from tests.pipeline_support import Receiver, Reply
from tests.support import Api, ServiceProcess, error_details, process_env
from webhooks.v1 import events_pb2 as E
from webhooks.v1 import webhook_service_pb2 as pb


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return {int(p) for p in path.read_text().split()}
    except FileNotFoundError:
        return set()


def _failure(api: Api, method: str, request: object) -> grpc.RpcError | None:
    try:
        api.call(method, request)
    except grpc.RpcError as error:
        return error
    return None


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_call_during_shutdown_gets_unavailable_and_no_worker_outlives_the_service(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = process_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'webhooks.db'}",
        WEBHOOKS_DELIVERY_WORKERS="1",
        WEBHOOKS_ALLOW_HTTP="true",
        WEBHOOKS_SHUTDOWN_GRACE_SECONDS="8",
        WEBHOOKS_SHUTDOWN_DRAIN_SECONDS="1",
        WEBHOOKS_METRICS_ADDRESS="off",
    )
    service = ServiceProcess(env, tmp_path / "service.log").start()
    assert service.process is not None
    pid = service.process.pid
    address = f"127.0.0.1:{service.port}"
    channel = grpc.insecure_channel(address)
    api = Api(address, None, channel)  # type: ignore[arg-type]
    try:
        slow = receiver.reply("/slow", Reply(200, delay=3.0))
        subscription = api.create(url=slow).subscription
        test_event = pb.SendTestEventRequest(subscription_id=subscription.id)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # In flight when SIGTERM comes: its attempt (3 s) finishes within the grace.
            in_flight = pool.submit(api.call, "SendTestEvent", test_event)
            receiver.wait_for("/slow", 1)
            workers = _children(pid)
            assert len(workers) == 1, workers  # the delivery worker, started by that attempt
            service.process.send_signal(signal.SIGTERM)

            # During the drain every call is refused by the service itself.
            refused: list[dict[str, object]] = []
            seen_children = set(workers)
            deadline = time.monotonic() + 5
            while len(refused) < 4:
                assert time.monotonic() < deadline, "no call was refused during the drain"
                method, request = (
                    ("SendTestEvent", test_event)
                    if len(refused) % 2
                    else ("GetSubscription", pb.GetSubscriptionRequest(id=subscription.id))
                )
                error = _failure(api, method, request)
                seen_children |= _children(pid)
                if error is None:
                    continue  # the signal lands a moment after it is sent
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                refused.append(error_details(error))
                assert service.process.poll() is None
                time.sleep(0.02)
            finished = in_flight.result(timeout=15)
            seen_children |= _children(pid)
            assert service.process.wait(15) == 0, service.log_path.read_text()[-2000:]

        assert {r["reason"] for r in refused} == {"SHUTTING_DOWN"}, refused
        assert finished.delivery.status == E.DELIVERY_STATUS_SUCCEEDED  # in flight: finished
        # Stopped: the address refuses connections, which callers see as UNAVAILABLE.
        after = _failure(api, "GetSubscription", pb.GetSubscriptionRequest(id=subscription.id))
        assert after is not None and after.code() == grpc.StatusCode.UNAVAILABLE
        assert seen_children == workers, "a worker process started during shutdown"
        assert not any(_alive(worker) for worker in workers), "the worker outlived the service"
    finally:
        channel.close()
        service.stop()


def test_a_closed_delivery_worker_starts_no_process() -> None:
    settings = AttemptSettings(
        allow_http=True,
        allow_cidrs=(),
        timeout_seconds=1.0,
        ca_file=None,
        schedule=(1,),
        jitter=0.0,
        disable_after=timedelta(days=1),
        audit_topic="audit",
        encode_audit=encode_attempt,
    )
    job = Job("msg_1", "sub_1", "t", "e1", "x.y", b"{}", 0, Trigger.TEST)
    target = Target("sub_1", "t", "http://127.0.0.1:9/", {}, (b"k",), 0, True, None)

    async def run() -> None:
        worker = DeliveryWorker(settings)
        await worker.close()
        with pytest.raises(Unavailable):
            await worker.start()
        with pytest.raises(Unavailable):
            await worker.attempt(job, target)
        assert worker.pid is None

    asyncio.run(run())
