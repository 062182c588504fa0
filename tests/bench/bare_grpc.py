"""The gRPC baseline: a grpc.aio WebhookService that does nothing but answer canned messages,
the same size as the real ones, in its own process."""

import argparse
import asyncio
from typing import Any

import grpc

from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc


def _subscription(n: int) -> pb.Subscription:
    return pb.Subscription(
        id=f"sub_01M83ECXB0QSVSR6M5AABX{n:04d}",
        name=f"subscription-{n}",
        url="https://hooks.example.com/in",
        event_types=["person.*"],
        enabled=True,
        secret_prefix="whsec_abcdef",
        created_by="bench",
    )


class Bare(pb_grpc.WebhookServiceServicer):
    def __init__(self) -> None:
        self.one = pb.GetSubscriptionResponse(subscription=_subscription(1))
        self.page = pb.ListSubscriptionsResponse(
            subscriptions=[_subscription(n) for n in range(50)], next_page_token="t" * 40
        )
        self.created = pb.CreateSubscriptionResponse(
            subscription=_subscription(1), secret="whsec_" + "A" * 44
        )

    async def GetSubscription(self, request: Any, context: Any) -> pb.GetSubscriptionResponse:
        return self.one

    async def ListSubscriptions(self, request: Any, context: Any) -> pb.ListSubscriptionsResponse:
        return self.page

    async def CreateSubscription(self, request: Any, context: Any) -> pb.CreateSubscriptionResponse:
        return self.created


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_WebhookServiceServicer_to_server(Bare(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))
