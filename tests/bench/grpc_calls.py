"""gRPC calls/s of Create, Get and List (50) at fixed concurrency, against any server."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc

from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc

CONCURRENCY = 16


async def _rate(seconds: float, call: Callable[[], Awaitable[object]]) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await call()
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.monotonic() - started)


async def _measure(address: str, key: str, seconds: float) -> dict[str, float]:
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.WebhookServiceStub(channel)

        async def create() -> object:
            request = pb.CreateSubscriptionRequest(
                subscription=pb.Subscription(
                    name=f"bench-{uuid.uuid4().hex}",
                    url="https://hooks.example.com/in",
                    event_types=["person.*"],
                )
            )
            return await stub.CreateSubscription(request, metadata=metadata)

        first = await create()
        assert isinstance(first, pb.CreateSubscriptionResponse)
        for _ in range(60):  # a full page for List
            await create()
        get = pb.GetSubscriptionRequest(id=first.subscription.id)
        page = pb.ListSubscriptionsRequest(page_size=50)
        listed = await stub.ListSubscriptions(page, metadata=metadata)
        assert len(listed.subscriptions) == 50
        return {
            "create": await _rate(seconds, create),
            "get": await _rate(seconds, lambda: stub.GetSubscription(get, metadata=metadata)),
            "list50": await _rate(seconds, lambda: stub.ListSubscriptions(page, metadata=metadata)),
        }


def measure(address: str, key: str, seconds: float) -> dict[str, float]:
    return asyncio.run(_measure(address, key, seconds))
