"""The libcurl sender against a real loopback server: connections reused, closed by the
server and opened again (their socket numbers reused) keep working, and nothing leaks (its
sockets and selector, counted by kind: other threads of the test process open files too)."""

import asyncio
import ipaddress
import os
from collections.abc import Iterator

import pytest

from service.engine.http import HttpSender
from tests.pipeline_support import Receiver, Reply


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    instance = Receiver().start()
    yield instance
    instance.stop()


def _epolls() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventpoll]"
        except OSError:
            continue
    return count


def _sockets_to(port: int) -> int:
    """This process's open TCP sockets whose peer is 127.0.0.1:`port` (other threads of the
    test process may open files meanwhile; only these are the sender's)."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in ours:
                    count += 1
    return count


def test_connections_closed_by_the_server_are_replaced_and_none_leak() -> None:
    epolls_before = _epolls()
    receiver = Receiver().start()
    keep = receiver.url("/keep")
    # The server closes these connections after answering; libcurl opens new ones, which
    # often get the socket numbers just freed.
    close = receiver.reply("/close", Reply(200, headers={"Connection": "close"}))

    async def run() -> list[int]:
        sender = HttpSender(
            allow_http=True,
            allow_cidrs=[ipaddress.ip_network("127.0.0.0/8")],
            timeout_seconds=5,
        )
        statuses: list[int] = []

        async def one(n: int) -> None:
            result = await sender.send(close if n % 3 == 0 else keep, {}, b'{"n": %d}' % n)
            statuses.append(result.http_status)

        try:
            for wave in range(10):
                await asyncio.gather(*(one(wave * 30 + n) for n in range(30)))
            # Idle now: every connection is parked in libcurl's pool. One more round.
            await asyncio.sleep(0.2)
            await asyncio.gather(*(one(n) for n in range(30)))
        finally:
            await sender.close()
        return statuses

    try:
        statuses = asyncio.run(run())
        assert statuses == [200] * 330
        assert len(receiver.at("/keep")) + len(receiver.at("/close")) == 330
        assert len(receiver.at("/close")) == 110
        assert _sockets_to(receiver.port) == 0  # the sender closed every connection
    finally:
        receiver.stop()  # it holds the server's ends of the connections
    assert _epolls() <= epolls_before  # the sender's selector is closed too


def test_connections_stay_open_through_a_quiet_spell_for_the_next_burst(
    receiver: Receiver,
) -> None:
    """A burst, then one request at a time, then a burst again: the second burst finds the
    first one's connections still open (a connect per request would cost the sender and
    the endpoint a handshake each)."""
    url = receiver.reply("/slow", Reply(200, delay=0.05))

    async def run() -> None:
        sender = HttpSender(
            allow_http=True, allow_cidrs=[ipaddress.ip_network("127.0.0.0/8")], timeout_seconds=5
        )
        try:
            for burst in range(2):
                results = await asyncio.gather(*(sender.send(url, {}, b"{}") for _ in range(60)))
                assert {r.http_status for r in results} == {200}
                if burst == 0:
                    for _ in range(5):  # the quiet spell: one transfer in flight
                        assert (await sender.send(url, {}, b"{}")).http_status == 200
        finally:
            await sender.close()

    asyncio.run(run())
    peers = {request.peer for request in receiver.at("/slow")}
    assert len(receiver.at("/slow")) == 125
    assert 60 <= len(peers) <= 62  # the second burst reused the first one's connections


def test_a_refused_connection_fails_fast_and_the_next_request_works(
    receiver: Receiver,
) -> None:
    import socket

    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/x"

    async def run() -> tuple[int, str, int]:
        sender = HttpSender(
            allow_http=True,
            allow_cidrs=[ipaddress.ip_network("127.0.0.0/8")],
            timeout_seconds=5,
        )
        try:
            refused = await sender.send(dead, {}, b"{}")
            ok = await sender.send(receiver.url("/after"), {}, b"{}")
        finally:
            await sender.close()
        return refused.http_status, refused.error_kind.name, ok.http_status

    assert asyncio.run(run()) == (0, "CONNECTION", 200)
