"""The benchmark's receiver: a bare aiohttp server on uvloop in its own process that counts
requests and, when asked, records produce-to-receipt latency from the event's `sent` field."""

import argparse
import asyncio
import json
import time

import uvloop
from aiohttp import web


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.latencies_ms: list[float] = []
        self.measure = False  # parse bodies for latency only when asked: it costs CPU

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.count += 1
        if self.measure:
            sent = json.loads(body)["data"]["sent"]
            self.latencies_ms.append((time.time() - sent) * 1000)
        return web.Response(text="ok")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"count": self.count, "latencies_ms": self.latencies_ms})

    async def reset(self, request: web.Request) -> web.Response:
        self.count = 0
        self.latencies_ms = []
        self.measure = request.query.get("latency") == "1"
        return web.Response(text="ok")


async def serve(port: int) -> None:
    counter = Counter()
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/stats", counter.stats)
    app.router.add_post("/reset", counter.reset)
    app.router.add_post("/{tail:.*}", counter.hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))
