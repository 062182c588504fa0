"""The benchmark's receiver: a minimal HTTP/1.1 server (an asyncio protocol on uvloop) in its
own process that counts requests and, when asked, records produce-to-receipt latency from the
event's `sent` field. It listens on 20 loopback addresses, and answers under /slow and /lag
as slow endpoints do (Counter.delay).

Minimal because it shares the two cores with what it measures: at 1,000 events/s (2,167
requests/s) an aiohttp server took 27-36% of a core, ~140 us per request, and this one
7-10%, ~40 us (make bench, latency stage). It speaks what its clients send: keep-alive
requests with a Content-Length body, one at a time per connection."""

import argparse
import asyncio
import json
import math
import random
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import uvloop

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
FAILED = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
# Slow endpoints (paths /slow and /lag): lognormal delays with a median of 100 ms and a p99
# of about 1 s; /slow also answers 1% with a 500 and never answers 0.2%.
MEDIAN_S, SIGMA = 0.1, math.log(10) / 2.326
FAIL_SHARE, HANG_SHARE = 0.01, 0.002
# Hosts the receiver listens on beside 127.0.0.1 (the same port): endpoints on 20 hosts.
HOSTS = [f"127.0.0.{n}" for n in range(1, 21)]
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.hung = 0
        self.latencies_ms: list[float] = []
        self.measure = False  # parse bodies for latency only when asked: it costs CPU

    def delay(self, target: bytes) -> tuple[float, bytes | None]:
        """Seconds before the answer to a request to a slow endpoint, and the answer (None:
        never)."""
        self.count += 1
        seconds = random.lognormvariate(math.log(MEDIAN_S), SIGMA)
        if target.startswith(b"/slow"):
            draw = random.random()
            if draw < HANG_SHARE:
                self.hung += 1
                return 0.0, None
            if draw < HANG_SHARE + FAIL_SHARE:
                return seconds, FAILED
        return seconds, OK

    def answer(self, method: bytes, target: bytes, body: bytes) -> bytes:
        if method == b"POST" and target.startswith(b"/reset"):
            self.count = 0
            self.hung = 0
            self.latencies_ms = []
            query = parse_qs(urlsplit(target.decode()).query)
            self.measure = query.get("latency") == ["1"]
            return OK
        if method == b"GET" and target.startswith(b"/stats"):
            stats = {"count": self.count, "hung": self.hung, "latencies_ms": self.latencies_ms}
            payload = json.dumps(stats)
            data = payload.encode()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            return head + str(len(data)).encode() + b"\r\n\r\n" + data
        if method == b"POST":
            self.count += 1
            if self.measure:
                sent = json.loads(body)["data"]["sent"]
                self.latencies_ms.append((time.time() - sent) * 1000)
            return OK
        return BAD


class Connection(asyncio.Protocol):
    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's, which is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            length, close = 0, False
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            start = end + 4
            if len(buffer) < start + length:
                break
            method, target, _ = [*lines[0].split(b" "), b"", b""][:3]
            body, buffer = buffer[start : start + length], buffer[start + length :]
            if method == b"POST" and target.startswith((b"/slow", b"/lag")):
                seconds, reply = self.counter.delay(target)
                if reply is not None:
                    asyncio.get_running_loop().call_later(seconds, self._late, reply)
                continue
            self.transport.write(self.counter.answer(method, target, body))
            if close:
                self.transport.close()
                return
        self.buffer = buffer

    def _late(self, reply: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(reply)


async def serve(port: int) -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Connection(counter), HOSTS, port, backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))
