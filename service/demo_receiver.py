"""A demo webhook receiver: answers 200, checks each Standard Webhooks signature against the
secrets it knows, and prints one JSON line per delivery (`webhook-service demo-receiver`,
the compose stack's receiver, and `webhookctl demo`)."""

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from service.domain import signing


@dataclass
class Delivery:
    """One request as the receiver saw it."""

    webhook_id: str
    event_type: str
    verified: bool | None  # None: no secret known to check it with
    body: bytes


@dataclass
class DemoReceiver:
    secrets: list[str] = field(default_factory=list)
    on_delivery: Callable[[Delivery], None] = lambda _: None
    received: list[Delivery] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        verified = None
        if self.secrets:
            verified = signing.verify(
                self.secrets,
                headers.get("webhook-id", ""),
                headers.get("webhook-timestamp", ""),
                headers.get("webhook-signature", ""),
                body,
                now=int(time.time()),
            )
        try:
            event_type = str(json.loads(body).get("type", ""))
        except (ValueError, AttributeError):
            event_type = ""
        delivery = Delivery(headers.get("webhook-id", ""), event_type, verified, body)
        self.received.append(delivery)
        self.on_delivery(delivery)
        # A receiver that cannot verify must refuse, so the service retries instead of
        # counting a forged or stale request as delivered.
        return web.Response(status=401 if verified is False else 200, text="ok")

    async def start(self, host: str, port: int) -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]


def print_line(delivery: Delivery) -> None:
    line = {
        "webhook_id": delivery.webhook_id,
        "type": delivery.event_type,
        "signature": {None: "not checked", True: "verified", False: "INVALID"}[delivery.verified],
        "body": delivery.body.decode("utf-8", "replace"),
    }
    print(json.dumps(line), flush=True)


def run(host: str, port: int, secrets: list[str]) -> int:
    """Serves until interrupted."""

    async def serve() -> None:
        receiver = DemoReceiver(secrets, print_line)
        runner, bound = await receiver.start(host, port)
        print(f"demo receiver listening on http://{host}:{bound}/", file=sys.stderr, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0
