"""Test helpers: API keys of the test principals, a server thread, a client, error details."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from kafka.embedded import free_port
from service.app import App
from service.config import Settings
from service.crypto import new_encryption_key
from service.domain.access import hash_key, new_api_key
from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc

CATALOG = Path(__file__).parent.parent / "service" / "dev_catalog.json"

# name -> (tenant, scopes); one key each, generated per test session.
PRINCIPALS: dict[str, tuple[str, list[str]]] = {
    "alice": ("acme", ["webhooks:write", "leads:subscribe"]),
    "bob": ("acme", ["webhooks:write"]),
    "reader": ("acme", ["webhooks:read"]),
    "admin": ("acme", ["webhooks:admin"]),
    "nobody": ("acme", []),
    "revoked": ("acme", ["webhooks:admin"]),
    "gina": ("globex", ["webhooks:admin"]),
    # The operator: edits the catalog every tenant shares (no tenant's admin may).
    "operator": ("ops", ["webhooks:catalog", "webhooks:read"]),
}
KEYS = {name: new_api_key() for name in PRINCIPALS}


def eventually(predicate: Callable[[], Any], timeout: float = 15) -> Any:
    """The first truthy value of `predicate`, polled every 0.05 s for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)
    return value


@contextmanager
def port_taken_first(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> Iterator[int]:
    """A loopback port something else listens on, which `module`'s free_port hands out
    first (then free ones again): a server given it finds it taken, as when another process
    took it between free_port and the server's bind."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        first = [port]
        monkeypatch.setattr(module, "free_port", lambda: first.pop() if first else free_port())
        yield port


def write_keys_file(path: Path) -> Path:
    entries = [
        {
            "id": name,
            "sha256": hash_key(KEYS[name]),
            "tenant": tenant,
            "principal": name,
            "scopes": scopes,
            "revoked": name == "revoked",
        }
        for name, (tenant, scopes) in PRINCIPALS.items()
    ]
    path.write_text(json.dumps({"keys": entries}))
    return path


def base_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return {
        "WEBHOOKS_API_KEYS_FILE": str(write_keys_file(tmp_path / "keys.json")),
        "WEBHOOKS_SECRET_ENCRYPTION_KEYS": new_encryption_key(),
        "WEBHOOKS_DATABASE_URL": database_url,
        "WEBHOOKS_EVENT_TYPES_FILE": str(CATALOG),
        "WEBHOOKS_GRPC_ADDRESS": "127.0.0.1:0",
        "WEBHOOKS_METRICS_ADDRESS": "127.0.0.1:0",
        "WEBHOOKS_SUBSCRIPTION_QUOTA": "10",
        "WEBHOOKS_TENANT_QUOTAS": "globex=2",
        "WEBHOOKS_SSRF_ALLOW_CIDRS": "127.0.0.0/8",
        "WEBHOOKS_SHUTDOWN_GRACE_SECONDS": "1",
        "WEBHOOKS_SHUTDOWN_DRAIN_SECONDS": "0",
        # API tests need no broker; the pipeline tests turn Kafka on with a real one.
        "WEBHOOKS_KAFKA_ENABLED": "false",
    }


@contextmanager
def postgres_schema(server_url: str, prefix: str = "t") -> Iterator[str]:
    """A database URL whose search path is a fresh schema of `server_url`'s database, dropped
    afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(server_url, autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{server_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


class ServerThread:
    """Runs one App on its own event loop in a background thread."""

    def __init__(self, settings: Settings, **parts: Any) -> None:
        self.app = App(settings, **parts)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.app.start(), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.app.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Api:
    """A client of a running server: `api.call("GetSubscription", request, as_="alice")`."""

    address: str
    settings: Settings
    channel: grpc.Channel
    stub: pb_grpc.WebhookServiceStub = field(init=False)
    app: App | None = None  # the in-process service behind the address, when there is one

    def __post_init__(self) -> None:
        self.stub = pb_grpc.WebhookServiceStub(self.channel)

    def call(
        self, method: str, request: Any, as_: str | None = "alice", key: str | None = None
    ) -> Any:
        token = key if key is not None else (KEYS[as_] if as_ else None)
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        return getattr(self.stub, method)(request, metadata=metadata, timeout=10)

    def create(self, as_: str = "alice", **fields: Any) -> pb.CreateSubscriptionResponse:
        fields.setdefault("name", f"sub-{uuid.uuid4().hex[:8]}")
        fields.setdefault("url", "https://hooks.example.com/in")
        request = pb.CreateSubscriptionRequest(subscription=pb.Subscription(**fields))
        response: pb.CreateSubscriptionResponse = self.call("CreateSubscription", request, as_=as_)
        return response


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(api: Api) -> Samples:
    """The server's Prometheus metrics, read over HTTP."""
    assert api.app is not None and api.app.metrics_port
    url = f"http://127.0.0.1:{api.app.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def error_details(error: grpc.RpcError) -> dict[str, Any]:
    """The google.rpc details of a failed call: reason, field violations, quota."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status"
    out: dict[str, Any] = {"violations": {}}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out["reason"], out["domain"], out["metadata"] = (
                info.reason,
                info.domain,
                dict(info.metadata),
            )
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out["violations"] = {v.field: v.description for v in bad.field_violations}
            out["violation_reasons"] = {v.field: v.reason for v in bad.field_violations}
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            out["quota"] = True
    return out


def expect_error(code: grpc.StatusCode, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Calls fn, asserts it fails with `code`, returns the error details."""
    with pytest.raises(grpc.RpcError) as caught:
        fn(*args, **kwargs)
    error = caught.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    details = error_details(error)
    details["message"] = error.details()
    return details


class ServiceProcess:
    """`python -m service serve` as a real process; logs go to a file so no pipe fills up."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = int(env["WEBHOOKS_GRPC_ADDRESS"].rsplit(":", 1)[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> "ServiceProcess":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve"], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                f"service exited: {self.log_path.read_text()[-2000:]}"
            )
            with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
            time.sleep(0.2)
        raise AssertionError("service never became healthy")

    def subscribe(
        self, url: str, as_: str = "alice", **fields: Any
    ) -> pb.CreateSubscriptionResponse:
        address = f"127.0.0.1:{self.port}"
        with grpc.insecure_channel(address) as channel:
            api = Api(address, None, channel)  # type: ignore[arg-type]
            return api.create(as_=as_, url=url, **fields)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def process_metric(process: ServiceProcess, prefix: str) -> float:
    """The sum of a service process's /metrics samples whose line starts with `prefix` (a
    name, or a name and labels): 0 when there are none."""
    url = f"http://{process.env['WEBHOOKS_METRICS_ADDRESS']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def run_command(command: str, env: dict[str, str]) -> "subprocess.CompletedProcess[str]":
    """`python -m service <command>` to its end (a start that should fail, kafka-init)."""
    return subprocess.run(
        [sys.executable, "-m", "service", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def process_env(tmp_path: Path, database_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a service process: this one's, minus WEBHOOKS_*, plus the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    env |= base_env(tmp_path, database_url)
    env["WEBHOOKS_GRPC_ADDRESS"] = f"127.0.0.1:{free_port()}"
    return env | overrides


def api_store(api: Api) -> Any:
    """The running server's subscription store, to check what is really stored: each method
    runs on this thread with a connection of its own."""
    assert api.app is not None
    app = api.app

    class Direct:
        def __getattr__(self, name: str) -> Any:
            method = getattr(app.stores.subscriptions, name)

            def call(*args: Any) -> Any:
                with app.database.connection_context():
                    return method(*args)

            return call

    return Direct()
