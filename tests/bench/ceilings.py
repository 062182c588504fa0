"""The ceilings: 1 KB POSTs at fixed concurrency to the same receiver, with no Kafka, no
database and no signing. (a) aiohttp on uvloop, the reference; (b) the service's own sender,
on the event loop the service runs."""

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop

from service.engine.http import HttpSender

BODY = b'{"pad":"' + b"x" * 1010 + b'"}'


async def _drive(total: int, concurrency: int, post: Callable[[], Awaitable[None]]) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await post()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def _bare_aiohttp(url: str, total: int, concurrency: int) -> float:
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def post() -> None:
            async with session.post(url, data=BODY, headers=headers) as response:
                await response.read()

        await _drive(concurrency * 4, concurrency, post)  # warm the connections
        return await _drive(total, concurrency, post)


async def _service_sender(url: str, total: int, concurrency: int) -> float:
    sender = HttpSender(
        allow_http=True,
        allow_cidrs=[ipaddress.ip_network("127.0.0.0/8")],
        timeout_seconds=15,
    )
    headers = {"content-type": "application/json"}

    async def post() -> None:
        result = await sender.send(url, headers, BODY)
        assert result.http_status == 200, result

    try:
        await _drive(concurrency * 4, concurrency, post)
        return await _drive(total, concurrency, post)
    finally:
        await sender.close()


def reference(url: str, total: int, concurrency: int) -> float:
    """(a) requests/s of bare aiohttp on uvloop."""
    return uvloop.run(_bare_aiohttp(url, total, concurrency))


def own_client(url: str, total: int, concurrency: int) -> float:
    """(b) requests/s of the service's HttpSender on the service's own loop (asyncio)."""
    return asyncio.run(_service_sender(url, total, concurrency))
