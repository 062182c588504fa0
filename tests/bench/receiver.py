"""The benchmark's receiver: a minimal HTTP/1.1 server (an asyncio protocol on uvloop) in its
own process that counts requests and, when asked, records produce-to-receipt latency from the
event's `sent` field.

Minimal because it shares the two cores with what it measures: at 1,000 events/s (2,167
requests/s) an aiohttp server took 27-36% of a core, ~140 us per request, and this one
7-10%, ~40 us (make bench, latency stage). It speaks what its clients send: keep-alive
requests with a Content-Length body, one at a time per connection."""

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import uvloop

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.latencies_ms: list[float] = []
        self.measure = False  # parse bodies for latency only when asked: it costs CPU

    def answer(self, method: bytes, target: bytes, body: bytes) -> bytes:
        if method == b"POST" and target.startswith(b"/reset"):
            self.count = 0
            self.latencies_ms = []
            query = parse_qs(urlsplit(target.decode()).query)
            self.measure = query.get("latency") == ["1"]
            return OK
        if method == b"GET" and target.startswith(b"/stats"):
            payload = json.dumps({"count": self.count, "latencies_ms": self.latencies_ms})
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
            self.transport.write(self.counter.answer(method, target, body))
            if close:
                self.transport.close()
                return
        self.buffer = buffer


async def serve(port: int) -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Connection(counter), "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))
