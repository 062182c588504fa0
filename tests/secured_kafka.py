"""An Apache Kafka node secured like a managed cluster, for tests/e2e/test_kafka_security.py.

Listeners (each on its own loopback port):
- PLAINTEXT: inter-broker, controller and the tests' own admin work; its principal
  (User:ANONYMOUS) is the only super user;
- SCRAM: SASL_SSL with SCRAM-SHA-512 and SCRAM-SHA-256, its users made at format time;
- MTLS: SSL with client certificates required, principal = the certificate's CN;
- SASL: SASL_PLAINTEXT with PLAIN (users in the broker's JAAS) and OAUTHBEARER (Kafka's
  unsecured JWT validator: tokens are checked for shape and expiry, not signature);
- OTHERHOST: SSL whose certificate names kafka.invalid only, for the host name check;
- EXPIRED: SSL whose certificate expired an hour ago.

StandardAuthorizer is on: a principal can do only what an ACL granted it (`grant`)."""

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest

from tests import pki
from tests.apache_kafka import KafkaCluster, KafkaNode, jars, started_cluster

SCRAM_USERS = {"alice": "alice-scram-secret"}
PLAIN_USERS = {
    "bob": "bob-plain-secret",
    "carol": "carol-plain-secret",
    "staging": "staging-plain-secret",
    "production": "production-plain-secret",
    "erin": "erin-plain-secret",
}
MTLS_CN = "webhooks-mtls"
LISTENERS = {
    "SCRAM": "SASL_SSL",
    "MTLS": "SSL",
    "SASL": "SASL_PLAINTEXT",
    "OTHERHOST": "SSL",
    "EXPIRED": "SSL",
}
# Kafka's AclOperation, ResourceType, PatternType and AclPermissionType codes.
READ, WRITE, CREATE, DESCRIBE = 3, 4, 5, 8
TOPIC, GROUP, CLUSTER = 2, 3, 4
LITERAL, ALLOW = 3, 3


@dataclass(frozen=True)
class Pki:
    """The files the service is given: the cluster's CA, another CA, client certificates."""

    ca: Path
    other_ca: Path
    client_cert: Path
    client_key: Path
    expired_cert: Path
    expired_key: Path


def make_pki(directory: Path) -> tuple[Pki, dict[str, str]]:
    """Writes the client side's files; returns them and the broker's inline PEMs."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.cert("test kafka CA", None, ca=True)
    other = pki.cert("some other CA", None, ca=True)
    broker = pki.cert("broker", ca, hosts=("localhost",))
    elsewhere = pki.cert("broker elsewhere", ca, hosts=("kafka.invalid",), loopback_ip=False)
    stale = pki.cert("broker", ca, expired=True)
    client = pki.cert(MTLS_CN, ca)
    expired = pki.cert(MTLS_CN, ca, expired=True)
    files = {
        "ca.pem": pki.pem(ca[0]),
        "other-ca.pem": pki.pem(other[0]),
        "client.pem": pki.pem(client[0]),
        "client.key": pki.key_pem(client[1]),
        "expired.pem": pki.pem(expired[0]),
        "expired.key": pki.key_pem(expired[1]),
    }
    for name, content in files.items():
        (directory / name).write_bytes(content)
    paths = Pki(*(directory / n for n in files))
    inline = {
        "ca": pki.pem(ca[0]).decode(),
        "broker_cert": pki.pem(broker[0]).decode(),
        "broker_key": pki.key_pem(broker[1]).decode(),
        "elsewhere_cert": pki.pem(elsewhere[0]).decode(),
        "elsewhere_key": pki.key_pem(elsewhere[1]).decode(),
        "expired_cert": pki.pem(stale[0]).decode(),
        "expired_key": pki.key_pem(stale[1]).decode(),
    }
    return paths, inline


def _settings(inline: dict[str, str]) -> dict[str, object]:
    plain_users = " ".join(f'user_{name}="{password}"' for name, password in PLAIN_USERS.items())
    settings: dict[str, object] = {
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:ANONYMOUS",
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512,SCRAM-SHA-256,OAUTHBEARER",
        "listener.name.scram.sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
        "listener.name.scram.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.scram.scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.sasl.sasl.enabled.mechanisms": "PLAIN,OAUTHBEARER",
        "listener.name.sasl.plain.sasl.jaas.config": (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
        ),
        "listener.name.sasl.oauthbearer.sasl.jaas.config": (
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required"
            ' unsecuredLoginStringClaim_sub="broker";'
        ),
        "listener.name.mtls.ssl.client.auth": "required",
        "listener.name.mtls.ssl.principal.mapping.rules": "RULE:^CN=([^,]*).*$/$1/,DEFAULT",
    }
    for listener, (cert, key) in {
        "scram": ("broker_cert", "broker_key"),
        "mtls": ("broker_cert", "broker_key"),
        "otherhost": ("elsewhere_cert", "elsewhere_key"),
        "expired": ("expired_cert", "expired_key"),
    }.items():
        settings |= {
            f"listener.name.{listener}.ssl.keystore.type": "PEM",
            f"listener.name.{listener}.ssl.keystore.certificate.chain": inline[cert],
            f"listener.name.{listener}.ssl.keystore.key": inline[key],
            f"listener.name.{listener}.ssl.truststore.type": "PEM",
            f"listener.name.{listener}.ssl.truststore.certificates": inline["ca"],
        }
    return settings


class SecuredKafka:
    """One secured node and the client-side files; `address(name)` is a listener's."""

    def __init__(self, root: Path) -> None:
        self.pki, self._inline = make_pki(root / "pki")
        self._root = root / "kafka"
        self._cluster: KafkaCluster | None = None
        self.supports_idempotence = True

    def _make(self) -> KafkaCluster:
        scram = [
            f"--add-scram={mechanism}=[name={name},password={password}]"
            for name, password in SCRAM_USERS.items()
            for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256")
        ]
        return KafkaCluster(
            self._root,
            1,
            jars(),
            listeners=LISTENERS,
            extra_settings=_settings(self._inline),
            format_args=tuple(scram),
        )

    @property
    def cluster(self) -> KafkaCluster:
        assert self._cluster is not None, "not started"
        return self._cluster

    @property
    def node(self) -> KafkaNode:
        return self.cluster.nodes[0]

    @property
    def bootstrap(self) -> str:
        """The super user's listener: the tests make topics, ACLs and events through it."""
        return self.cluster.bootstrap

    def address(self, listener: str) -> str:
        """host:port of a listener; PLAINTEXT is the super user's."""
        if listener == "PLAINTEXT":
            return self.bootstrap
        return f"127.0.0.1:{self.node.ports[listener]}"

    def start(self) -> None:
        self._cluster = started_cluster(self._root, self._make)

    def stop(self) -> None:
        if self._cluster is not None:
            self._cluster.stop()

    def pause(self) -> None:
        self.cluster.pause()

    def resume(self) -> None:
        self.cluster.resume()

    def grant(self, principal: str, *acls: tuple[int, str, int]) -> None:
        """ALLOW ACLs for User:`principal`, each (resource type, literal name, operation)."""
        self._change(CreateAclsRequest, "creation_responses", principal, acls)

    def revoke(self, principal: str, *acls: tuple[int, str, int]) -> None:
        """Deletes ACLs `grant` made."""
        self._change(DeleteAclsRequest, "filter_responses", principal, acls)

    def _change(
        self, kind: type, answers: str, principal: str, acls: tuple[tuple[int, str, int], ...]
    ) -> None:
        async def run() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                for resource, name, operation in acls:
                    request = kind(
                        resource, name, LITERAL, f"User:{principal}", "*", operation, ALLOW
                    )
                    response = await admin._send_request(request)
                    for code, message, *_ in getattr(response, answers):
                        assert code == 0, f"{kind.__name__} failed: {code} {message}"
            finally:
                await admin.close()

        asyncio.run(run())


def service_acls(
    group: str, ingest: list[str], audit: str, dead_letter: str
) -> list[tuple[int, str, int]]:
    """Exactly what README's "Running on your Kafka" lists for `serve`."""
    return [
        (GROUP, group, READ),
        *((TOPIC, topic, READ) for topic in ingest),
        (TOPIC, audit, WRITE),
        (TOPIC, dead_letter, WRITE),
    ]


def unsecured_jwt(subject: str, lifetime_seconds: int = 3600) -> str:
    """A token Kafka's unsecured OAUTHBEARER validator accepts: alg none, no signature."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + lifetime_seconds}
    return f"{part({'alg': 'none'})}.{part(claims)}."


@contextmanager
def running(root: Path) -> Iterator[SecuredKafka]:
    kafka = SecuredKafka(root)
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.stop()
