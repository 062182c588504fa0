"""TLS and mTLS on the gRPC port; quota and request_id hold under concurrent creates."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.config import Settings
from tests.pki import cert, key_pem, pem
from tests.support import KEYS, Api, ServerThread, base_env
from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = cert("test-ca", None, ca=True)
    server = cert("localhost", ca)
    client = cert("client", ca)
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
    }
    files["ca"].write_bytes(pem(ca[0]))
    files["cert"].write_bytes(pem(server[0]))
    files["key"].write_bytes(key_pem(server[1]))
    return {"files": files, "ca": pem(ca[0]), "client": (pem(client[0]), key_pem(client[1]))}


def _start(tmp_path: Path, **extra: str) -> tuple[ServerThread, int]:
    env = base_env(tmp_path, f"sqlite:///{tmp_path / 'tls.db'}") | extra
    server = ServerThread(Settings.from_env(env))
    return server, server.start()


def _list(channel: grpc.Channel) -> int:
    reply = pb_grpc.WebhookServiceStub(channel).ListSubscriptions(
        pb.ListSubscriptionsRequest(),
        metadata=(("authorization", f"Bearer {KEYS['reader']}"),),
        timeout=5,
    )
    return int(reply.total_size)


def test_tls_serves_verified_clients_only(tmp_path: Path, pki: dict[str, Any]) -> None:
    files = pki["files"]
    server, port = _start(
        tmp_path, WEBHOOKS_TLS_CERT_FILE=str(files["cert"]), WEBHOOKS_TLS_KEY_FILE=str(files["key"])
    )
    try:
        secure = grpc.secure_channel(
            f"localhost:{port}", grpc.ssl_channel_credentials(root_certificates=pki["ca"])
        )
        with secure:
            assert _list(secure) == 0
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as plain,
            pytest.raises(grpc.RpcError) as caught,
        ):
            _list(plain)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_mtls_requires_a_client_certificate(tmp_path: Path, pki: dict[str, Any]) -> None:
    files = pki["files"]
    server, port = _start(
        tmp_path,
        WEBHOOKS_TLS_CERT_FILE=str(files["cert"]),
        WEBHOOKS_TLS_KEY_FILE=str(files["key"]),
        WEBHOOKS_TLS_CLIENT_CA_FILE=str(files["ca"]),
    )
    try:
        cert, key = pki["client"]
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=pki["ca"], private_key=key, certificate_chain=cert
        )
        with grpc.secure_channel(f"localhost:{port}", with_cert) as channel:
            assert _list(channel) == 0
        without = grpc.ssl_channel_credentials(root_certificates=pki["ca"])
        with (
            grpc.secure_channel(f"localhost:{port}", without) as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            _list(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_quota_holds_under_concurrent_creates(api: Api) -> None:
    # globex may have 2 subscriptions; 8 racing creates must leave exactly 2.
    def attempt(i: int) -> grpc.StatusCode:
        try:
            api.create(as_="gina", name=f"race-{i}")
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(attempt, range(8)))
    assert codes.count(grpc.StatusCode.OK) == 2
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 6
    assert api.call("ListSubscriptions", pb.ListSubscriptionsRequest(), as_="gina").total_size == 2


def test_concurrent_retries_of_one_request_id_create_one_subscription(api: Api) -> None:
    request = pb.CreateSubscriptionRequest(
        subscription=pb.Subscription(name="once", url="https://hooks.example.com/once"),
        request_id="same",
    )
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: api.call("CreateSubscription", request), range(6)))
    assert len({r.subscription.id for r in replies}) == 1
    assert len({r.secret for r in replies}) == 1
    assert api.call("ListSubscriptions", pb.ListSubscriptionsRequest()).total_size == 1
