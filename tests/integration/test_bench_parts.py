"""The benchmark's own parts: its receiver over real HTTP."""

import http.client
import json
import socket
import time

from tests.bench.e2e import Receiver


def test_receiver_counts_keep_alive_posts_and_measures_latency_when_asked() -> None:
    receiver = Receiver()
    try:
        receiver.reset(latency=True)
        connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
        for _ in range(3):  # one connection, kept alive
            body = json.dumps({"data": {"sent": time.time() - 1.0}}).encode()
            connection.request("POST", "/hook", body, {"content-type": "application/json"})
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b"ok")
        connection.close()
        # A request split across reads, headers then body, is one request.
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as raw:
            body = json.dumps({"data": {"sent": time.time()}}).encode()
            raw.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            time.sleep(0.05)
            raw.sendall(body)
            assert raw.recv(1000).startswith(b"HTTP/1.1 200 OK")
        stats = receiver.stats()
        assert stats["count"] == 4
        assert all(0 <= ms < 5000 for ms in stats["latencies_ms"])
        assert sorted(ms >= 1000 for ms in stats["latencies_ms"]) == [False, True, True, True]
        receiver.reset()  # counting only: bodies are not parsed
        connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
        connection.request("POST", "/ceiling", b"not json")
        assert connection.getresponse().read() == b"ok"
        connection.close()
        assert receiver.stats() == {"count": 1, "hung": 0, "latencies_ms": []}
        # A slow endpoint: answered after a lognormal delay (median 100 ms), and counted.
        connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=30)
        connection.request("POST", "/lag/3", b"{}")
        assert connection.getresponse().status == 200
        connection.close()
        assert receiver.stats()["count"] == 2
    finally:
        receiver.stop()
