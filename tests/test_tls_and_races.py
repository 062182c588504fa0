"""TLS and mTLS on the gRPC port; quota and request_id hold under concurrent creates."""

import datetime
import ipaddress
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.config import Settings
from tests.support import KEYS, Api, ServerThread, base_env
from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc


def _cert(
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = _cert("test-ca", None, ca=True)
    server = _cert("localhost", ca)
    client = _cert("client", ca)
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
    }
    files["ca"].write_bytes(_pem(ca[0]))
    files["cert"].write_bytes(_pem(server[0]))
    files["key"].write_bytes(_key_pem(server[1]))
    return {"files": files, "ca": _pem(ca[0]), "client": (_pem(client[0]), _key_pem(client[1]))}


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
