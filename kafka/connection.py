"""How every Kafka client of the service connects: bootstrap servers, client id, TLS and SASL.

The consumer, the producer and the admin clients take `KafkaConnection.options()`, so they
all present the same identity. Files (CA, certificate, key, password, token) are read each
time a client is made: a rotated certificate or password is used at the next reconnect."""

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS and SASL as the settings give them. `password` is a callable so that the secret
    is read when needed and never sits in a repr, a log line or an error."""

    protocol: str = "PLAINTEXT"
    ca_file: Path | None = None  # None: the system's CAs
    cert_file: Path | None = None  # with key_file: a client certificate (mTLS)
    key_file: Path | None = None
    check_hostname: bool = True
    mechanism: str = ""
    username: str = ""
    password: Callable[[], str] = field(default=lambda: "", repr=False)
    token_provider: AbstractTokenProvider | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.protocol in TLS_PROTOCOLS

    @property
    def sasl(self) -> bool:
        return self.protocol in SASL_PROTOCOLS

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that verifies the broker (and its host name unless told not to),
        with the client certificate when one is set; None without TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        context.check_hostname = self.check_hostname
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap: str
    client_id: str = "webhook-service"
    security: KafkaSecurity = KafkaSecurity()

    @property
    def servers(self) -> list[tuple[str, int]]:
        """The bootstrap servers as (host, port)."""
        out = []
        for server in self.bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out

    def options(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaConsumer, AIOKafkaProducer and AIOKafkaAdminClient."""
        security = self.security
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "security_protocol": security.protocol,
            "ssl_context": security.ssl_context(),
        }
        if security.sasl:
            options["sasl_mechanism"] = security.mechanism
            if security.mechanism == "OAUTHBEARER":
                options["sasl_oauth_token_provider"] = security.token_provider
            else:
                options["sasl_plain_username"] = security.username
                options["sasl_plain_password"] = security.password()
        return options

    def describe(self) -> str:
        """What the logs and errors may say about the connection: no secret."""
        security = self.security
        text = f"{self.bootstrap} over {security.protocol}"
        if security.sasl:
            who = f" as {security.username!r}" if security.username else ""
            text += f" with SASL {security.mechanism}{who}"
        return text
