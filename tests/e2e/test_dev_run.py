"""`make run`'s entry point as a real process: embedded broker, SQLite, a dev key; the CLI
drives it (create, publish, list, demo) and Ctrl-C stops everything it started."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kafka.embedded import free_port
from tests.pipeline_support import Receiver

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _ctl(cwd: Path, address: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOKS_", "WEBHOOKCTL_"))}
    done = subprocess.run(
        [str(BIN / "webhookctl"), "--address", address, *args],
        cwd=cwd,  # the key comes from .dev/dev-api-key, as after `make run`
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _healthy(address: str) -> bool:
    done = subprocess.run(
        [str(BIN / "webhook-service"), "healthcheck", "--address", address],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def test_make_run_entry_point_serves_the_cli_and_stops_on_ctrl_c(
    tmp_path: Path, receiver: Receiver
) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    env |= {
        "WEBHOOKS_GRPC_ADDRESS": address,
        "WEBHOOKS_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "WEBHOOKS_KAFKA_SESSION_TIMEOUT_MS": "2000",  # joins the group faster than the default
    }
    log = tmp_path / "run.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "dev"],
            cwd=tmp_path,
            env=env,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 60
        while not _healthy(address):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "never healthy"
            time.sleep(0.3)
        banner = log.read_text()
        key = (tmp_path / ".dev" / "dev-api-key").read_text().strip()
        assert f"API key   {key}" in banner and f"gRPC      {address}" in banner
        assert "webhookctl" in banner and "demo" in banner
        kafka = re.search(r"Kafka\s+(\S+) \(embedded tansu", banner)
        assert kafka, banner
        assert _port_open(kafka.group(1))

        out = _ctl(
            tmp_path,
            address,
            "subscriptions",
            "create",
            "--name",
            "first",
            "--url",
            receiver.url("/dev"),
            "--event-type",
            "invoice.paid",
        )
        assert "whsec_" in out
        assert "published" in _ctl(
            tmp_path, address, "events", "publish", "--type", "invoice.paid", "--data", '{"a":1}'
        )
        [request] = receiver.wait_for("/dev", 1, timeout=30)
        listed = ""
        for _ in range(100):
            listed = _ctl(tmp_path, address, "deliveries", "list")
            if "succeeded" in listed:
                break
            time.sleep(0.1)
        assert request.headers["webhook-id"] in listed and "succeeded" in listed

        demo = _ctl(tmp_path, address, "demo", "--count", "2")
        assert demo.count("verified") == 2 and demo.count("succeeded") == 2

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert process.wait(30) == 0, log.read_text()[-3000:]
        assert not _port_open(kafka.group(1)), "the embedded broker outlived the service"
        assert not _port_open(address)
        assert key not in log.read_text().replace(f"API key   {key}", "")  # only the banner
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
