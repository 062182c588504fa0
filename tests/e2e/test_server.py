"""The server as a whole: health, reflection, unimplemented RPCs, the real process and its CLI."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.domain.access import hash_key, new_api_key
from tests.support import KEYS, Api, base_env, expect_error
from webhooks.v1 import webhook_service_pb2 as pb

ROOT = Path(__file__).parents[2]
BUF = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")


def test_health_needs_no_key(api: Api) -> None:
    stub = health_pb2_grpc.HealthStub(api.channel)
    for service in ("", "webhooks.v1.WebhookService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_publish_answers_unavailable_when_kafka_is_disabled(api: Api) -> None:
    from webhooks.v1 import events_pb2

    request = pb.PublishEventRequest(
        event=events_pb2.DomainEvent(id="e1", type="person.created", data=b"{}")
    )
    details = expect_error(
        grpc.StatusCode.UNAVAILABLE, api.call, "PublishEvent", request, as_="admin"
    )
    assert "WEBHOOKS_KAFKA_ENABLED" in details["message"]
    expect_error(grpc.StatusCode.UNAUTHENTICATED, api.call, "PublishEvent", request, as_=None)


def _buf_curl(
    address: str,
    method: str,
    body: dict[str, Any],
    key: str | None,
    reflection: str = "grpc-v1",
) -> subprocess.CompletedProcess[str]:
    assert BUF, "the buf CLI (buf-bin) is not installed"
    command = [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", json.dumps(body)]
    command += ["--reflect-protocol", reflection]
    if key:
        command += ["-H", f"authorization: Bearer {key}"]
    command.append(f"http://{address}/webhooks.v1.WebhookService/{method}")
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_reflection_only_client_drives_the_api(api: Api) -> None:
    """buf curl knows nothing of our stubs: it learns the schema from server reflection."""
    created = _buf_curl(
        api.address,
        "CreateSubscription",
        {
            "subscription": {
                "name": "via-reflection",
                "url": "https://hooks.example.com/r",
                "eventTypes": ["lead.*"],
            }
        },
        KEYS["alice"],
    )
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["secret"].startswith("whsec_")
    sub_id = body["subscription"]["id"]
    got = json.loads(
        _buf_curl(api.address, "GetSubscription", {"id": sub_id}, KEYS["reader"]).stdout
    )
    assert got["subscription"]["name"] == "via-reflection"
    assert "secret" not in got and got["subscription"]["secretPrefix"] == body["secret"][:12]
    refused = _buf_curl(api.address, "ListSubscriptions", {}, None)
    assert refused.returncode != 0
    # Older clients speak only v1alpha, newer ones only v1: both are served.
    old = _buf_curl(api.address, "GetSubscription", {"id": sub_id}, KEYS["reader"], "grpc-v1alpha")
    assert json.loads(old.stdout)["subscription"]["id"] == sub_id
    assert BUF
    command = [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods"]
    listed = subprocess.run(
        [*command, "--reflect-protocol", "grpc-v1", f"http://{api.address}/"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert "grpc.reflection.v1.ServerReflection/ServerReflectionInfo" in listed
    assert "webhooks.v1.WebhookService/CreateSubscription" in listed
    assert "unauthenticated" in (refused.stdout + refused.stderr).lower()


def _service(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `python -m service ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _service_env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    env |= base_env(tmp_path, f"sqlite:///{tmp_path / 'proc.db'}")
    env["WEBHOOKS_GRPC_ADDRESS"] = f"127.0.0.1:{port}"
    return env


def _wait_healthy(port: int, env: dict[str, str], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"service exited early: {proc.communicate()[1]}"
        if _service("healthcheck", "--address", f"127.0.0.1:{port}", env=env).returncode == 0:
            return
        time.sleep(0.3)
    pytest.fail("service never became healthy")


def test_service_process_serves_and_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = _service_env(tmp_path, port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_healthy(port, env, proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = Api(f"127.0.0.1:{port}", None, channel)  # type: ignore[arg-type]
            secret = api.create(name="proc").secret
            # SIGHUP reloads the keys file: a key added now works without a restart.
            new_key = new_api_key()
            keys_file = Path(env["WEBHOOKS_API_KEYS_FILE"])
            document = json.loads(keys_file.read_text())
            document["keys"].append(
                {"sha256": hash_key(new_key), "tenant": "acme", "scopes": ["webhooks:read"]}
            )
            keys_file.write_text(json.dumps(document))
            expect_error(
                grpc.StatusCode.UNAUTHENTICATED,
                api.call,
                "ListSubscriptions",
                pb.ListSubscriptionsRequest(),
                key=new_key,
            )
            proc.send_signal(signal.SIGHUP)
            _eventually(
                lambda: (
                    api.call(
                        "ListSubscriptions", pb.ListSubscriptionsRequest(), key=new_key
                    ).total_size
                    == 1
                )
            )
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert "serving gRPC" in messages and "API keys reloaded" in messages
    assert "shutting down" in messages and messages[-1] == "stopped"
    # No secret or API key ever reaches the logs.
    for secret_text in (secret, *KEYS.values()):
        assert secret_text not in stderr
    # Signing secrets are not readable in the database file.
    assert secret.encode() not in (tmp_path / "proc.db").read_bytes()
    wal = tmp_path / "proc.db-wal"
    assert not wal.exists() or secret.encode() not in wal.read_bytes()


def _eventually(check: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("condition never became true")
        time.sleep(0.1)


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    port = _free_port()
    check = _service("healthcheck", "--address", f"127.0.0.1:{port}")
    assert check.returncode == 1
    assert "NOT SERVING" in check.stderr


def test_bad_settings_fail_fast_with_every_problem_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    env |= {
        "WEBHOOKS_GRPC_ADDRESS": "no-port",
        "WEBHOOKS_SUBSCRIPTION_QUOTA": "-3",
        "WEBHOOKS_ALLOW_HTTP": "maybe",
        "WEBHOOKS_COLOUR": "blue",
    }
    result = _service("serve", env=env)
    assert result.returncode == 2
    for expected in (
        "WEBHOOKS_API_KEYS_FILE is required",
        "WEBHOOKS_SECRET_ENCRYPTION_KEYS is required",
        "WEBHOOKS_GRPC_ADDRESS must be host:port",
        "WEBHOOKS_SUBSCRIPTION_QUOTA must be between 0",
        "WEBHOOKS_ALLOW_HTTP must be true or false",
        "WEBHOOKS_COLOUR is not a known setting",
    ):
        assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_a_clear_startup_error(tmp_path: Path) -> None:
    env = _service_env(tmp_path, _free_port())
    env["WEBHOOKS_DATABASE_URL"] = "postgresql://nobody:hunter2@127.0.0.1:1/none"
    result = _service("serve", env=env)
    assert result.returncode == 2
    assert "cannot reach the database at postgresql://nobody@127.0.0.1:1/none" in result.stderr
    assert "hunter2" not in result.stderr


def test_new_api_key_prints_a_usable_keys_file_entry(tmp_path: Path) -> None:
    result = _service(
        "new-api-key", "--tenant", "t1", "--principal", "ci", "--scope", "webhooks:read"
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.split("shown once, give it to the caller): ")[1].split()[0]
    entry = json.loads(result.stdout[result.stdout.index("{") :])
    from service.domain.access import authenticate, parse_keys

    principal = authenticate(parse_keys({"keys": [entry]}), f"Bearer {key}")
    assert principal.tenant == "t1" and principal.name == "ci" and principal.has("webhooks:read")
