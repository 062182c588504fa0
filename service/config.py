"""Settings: one object read from `WEBHOOKS_*` environment variables and validated at start."""

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

from kafka import topics
from kafka.connection import MECHANISMS, PROTOCOLS, SASL_PROTOCOLS, TLS_PROTOCOLS
from service.domain.retry import DEFAULT_SCHEDULE

PREFIX = "WEBHOOKS_"
N = TypeVar("N", int, float)
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(Exception):
    """One or more settings are missing or invalid; the message lists every problem."""


def _path(value: str) -> Path:
    return Path(value)


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _in_range(cast: Callable[[str], N], low: N, high: N) -> Callable[[str], N]:
    def parse(value: str) -> N:
        number = cast(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number

    return parse


def _one_of(*choices: str, case: Callable[[str], str] = str.lower) -> Callable[[str], str]:
    """One of `choices`, compared and returned in `case` (lower unless told)."""

    def parse(value: str) -> str:
        chosen = case(value.strip())
        if chosen not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return chosen

    return parse


def _token_url(value: str) -> str:
    """https, or http to this machine only: the client secret travels in the request."""
    url = urlsplit(value)
    loopback = url.hostname in ("localhost", "127.0.0.1", "::1")
    if not url.hostname or not (url.scheme == "https" or (url.scheme == "http" and loopback)):
        raise ValueError("must be an https:// URL (http:// only to localhost)")
    return value


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be host:port")
    return value


def _address_or_off(value: str) -> str:
    return "" if value.strip().lower() == "off" else _address(value)


def _database_url(value: str) -> str:
    if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ValueError("must start with sqlite:/// or postgresql://")
    return value


def _fernet_keys(value: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    if not keys:
        raise ValueError("is required (generate one with `webhook-service new-encryption-key`)")
    for key in keys:
        try:
            Fernet(key)
        except ValueError:
            raise ValueError(
                "each key must be 32 url-safe base64 bytes (`webhook-service new-encryption-key`)"
            ) from None
    return keys


def _cidrs(value: str) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(c.strip()) for c in value.split(",") if c.strip())


def _names(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ValueError("must name at least one")
    return names


def _quotas(value: str) -> tuple[tuple[str, int], ...]:
    out: dict[str, int] = {}
    for item in (i.strip() for i in value.split(",") if i.strip()):
        tenant, sep, number = item.partition("=")
        if not sep or not tenant or not number.isdigit():
            raise ValueError("must be tenant=number pairs separated by commas")
        out[tenant.strip()] = int(number)
    return tuple(out.items())


def _schedule(value: str) -> tuple[float, ...]:
    delays = tuple(float(v) for v in value.split(",") if v.strip())
    if not 1 <= len(delays) <= 30 or any(d < 0 or d > 7 * 86_400 for d in delays):
        raise ValueError("must be 1 to 30 comma-separated delays in seconds, each 0 to 604800")
    return delays


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression: {exc}") from None
    return value


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def _setting(
    default: object, parse: Callable[[str], object], doc: str, *, secret: bool = False
) -> Any:
    """A settings field: its default (None = required), its parser and its meaning. A secret
    one is left out of the settings' repr, so no log or error can show it."""
    return field(default=default, metadata={"parse": parse, "doc": doc}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Every setting of the service. Each field is read from WEBHOOKS_<FIELD NAME>."""

    api_keys_file: Path = _setting(None, _path, "JSON file of hashed API keys (required)")
    secret_encryption_keys: tuple[str, ...] = _setting(
        None,
        _fernet_keys,
        "Fernet keys encrypting signing secrets at rest, newest first (required)",
        secret=True,
    )
    grpc_address: str = _setting("127.0.0.1:50051", _address, "gRPC listen address")
    database_url: str = _setting(
        "sqlite:///webhooks.db", _database_url, "sqlite:///path or postgresql://user@host/db"
    )
    kafka_bootstrap_servers: str = _setting("localhost:9092", str, "Kafka bootstrap servers")
    kafka_enabled: bool = _setting(
        True, _bool, "run ingest and audit publishing (false: gRPC and retries only)"
    )
    kafka_topics: tuple[str, ...] = _setting(
        (topics.DEFAULT_INGEST_TOPIC,), _names, "ingest topics, comma-separated"
    )
    kafka_topic_pattern: str = _setting(
        "", _regex, "regular expression of ingest topics; replaces the list when set"
    )
    kafka_session_timeout_ms: int = _setting(
        10_000,
        _in_range(int, 1000, 300_000),
        "consumer group session timeout (brokers want >= 6000)",
    )
    kafka_group_id: str = _setting(
        topics.CONSUMER_GROUP, str, "consumer group of the service's instances (one per deployment)"
    )
    kafka_client_id: str = _setting(
        "webhook-service", str, "client id the brokers see (their logs, metrics and quotas)"
    )
    kafka_audit_topic: str = _setting(
        topics.DELIVERY_ATTEMPTS_TOPIC, str, "topic of the delivery attempts' audit records"
    )
    kafka_dead_letter_topic: str = _setting(
        topics.DEAD_LETTER_TOPIC, str, "topic of the records ingest could not accept"
    )
    kafka_security_protocol: str = _setting(
        "PLAINTEXT",
        _one_of(*PROTOCOLS, case=str.upper),
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    kafka_ssl_ca_file: Path | None = _setting(
        None,
        _optional_path,
        "PEM CA bundle that signed the brokers' certificates (default: system)",
    )
    kafka_ssl_cert_file: Path | None = _setting(
        None, _optional_path, "PEM client certificate, for brokers that want one (mTLS)"
    )
    kafka_ssl_key_file: Path | None = _setting(
        None, _optional_path, "PEM private key of the client certificate (unencrypted)"
    )
    kafka_ssl_check_hostname: bool = _setting(
        True, _bool, "the broker's certificate must name the host connected to"
    )
    kafka_sasl_mechanism: str = _setting(
        "",
        _one_of(*MECHANISMS, case=str.upper),
        "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
    )
    kafka_sasl_username: str = _setting(
        "", str, "SASL user name (OAUTHBEARER with a token URL: the OAuth client id)"
    )
    kafka_sasl_password: str = _setting(
        "", str, "SASL password or OAuth client secret; prefer the _FILE setting", secret=True
    )
    kafka_sasl_password_file: Path | None = _setting(
        None, _optional_path, "file holding the SASL password (read at each connection)"
    )
    kafka_oauth_token_url: str = _setting(
        "", _token_url, "OAUTHBEARER: token endpoint for the client credentials grant"
    )
    kafka_oauth_scope: str = _setting("", str, "OAUTHBEARER: scope asked of the token endpoint")
    kafka_oauth_token_file: Path | None = _setting(
        None, _optional_path, "OAUTHBEARER: file holding a token kept fresh by another process"
    )
    kafka_idempotence: bool = _setting(
        True,
        _bool,
        "idempotent audit and dead-letter producer (acks=all either way); false only for"
        " brokers without InitProducerId, such as the embedded one",
    )
    kafka_partitions: int = _setting(
        6, _in_range(int, 1, 10_000), "partitions of each topic `kafka-init` creates"
    )
    kafka_replication_factor: int = _setting(
        0,
        _in_range(int, 0, 32),
        "replicas of each topic `kafka-init` creates; 0 = 3, or every broker when fewer",
    )
    kafka_retention_hours: int = _setting(
        168,
        _in_range(int, -1, 100_000),
        "how long the topics `kafka-init` creates keep records; -1 = forever",
    )
    kafka_fetch_max_wait_ms: int = _setting(
        10,
        _in_range(int, 1, 10_000),
        "longest an idle consumer's fetch waits for new records (3 ms while they flow); "
        "the embedded broker answers only then, real Kafka as soon as records arrive",
    )
    max_event_bytes: int = _setting(
        1_048_576, _in_range(int, 1024, 16 * 1_048_576), "largest accepted event record"
    )
    event_types_file: Path | None = _setting(
        None, _optional_path, "JSON catalog of event types loaded at start"
    )
    default_tenant: str = _setting("default", str, "tenant of events that name none")
    subscription_quota: int = _setting(
        100, _in_range(int, 0, 1_000_000), "subscriptions per tenant; 0 = unlimited"
    )
    tenant_quotas: tuple[tuple[str, int], ...] = _setting(
        (), _quotas, "per-tenant overrides, e.g. acme=3,globex=500"
    )
    allow_http: bool = _setting(False, _bool, "accept http:// endpoints (development only)")
    ssrf_allow_cidrs: tuple[IpNetwork, ...] = _setting(
        (), _cidrs, "non-public networks endpoints may use, e.g. 10.1.0.0/16"
    )
    retry_schedule: tuple[float, ...] = _setting(
        DEFAULT_SCHEDULE, _schedule, "seconds before each retry after the first attempt"
    )
    retry_jitter: float = _setting(
        0.1, _in_range(float, 0.0, 1.0), "spread of each retry delay, as a fraction (+/-)"
    )
    disable_after_seconds: int = _setting(
        432_000, _in_range(int, 60, 30 * 86_400), "failing without success this long disables"
    )
    attempt_timeout_seconds: float = _setting(
        15.0, _in_range(float, 0.1, 120.0), "time limit of one HTTP attempt"
    )
    subscription_names_unique_per: str = _setting(
        "tenant", _one_of("tenant", "principal"), "scope of a subscription name's uniqueness"
    )
    require_secret_proof: bool = _setting(
        False, _bool, "Update, Delete and Rotate need the current secret from non-admin keys"
    )
    verify_endpoints: bool = _setting(
        False, _bool, "ping every new endpoint URL (create, URL change) before accepting it"
    )
    verify_timeout_seconds: float = _setting(
        10.0, _in_range(float, 0.1, 60.0), "time limit of an endpoint verification ping"
    )
    replay_max_events: int = _setting(
        10_000, _in_range(int, 1, 1_000_000), "most events one ReplayEvents call may send"
    )
    endpoint_concurrency: int = _setting(
        50, _in_range(int, 1, 1000), "most simultaneous requests to one endpoint"
    )
    host_concurrency: int = _setting(
        100,
        _in_range(int, 1, 10_000),
        "most simultaneous requests to one host, however many subscriptions share it",
    )
    default_rate_limit: int = _setting(
        0, _in_range(int, 0, 100_000), "requests/s per endpoint without its own; 0 = none"
    )
    circuit_failures: int = _setting(
        5, _in_range(int, 1, 1000), "consecutive failures that open an endpoint's circuit"
    )
    circuit_cooldown_seconds: float = _setting(
        30.0, _in_range(float, 0.1, 3600.0), "first pause of an open circuit (doubles, x10 max)"
    )
    delivery_lease_seconds: float = _setting(
        60.0,
        _in_range(float, 1.0, 3600.0),
        "a crashed instance's deliveries are retried after this",
    )
    delivery_workers: int = _setting(
        1,
        _in_range(int, 0, 64),
        "child processes that sign and send (about one per core beyond the service's own;"
        " 0: in the service)",
    )
    max_in_flight: int = _setting(
        2000,
        _in_range(int, 1, 100_000),
        "deliveries queued for or at endpoints; beyond, ingest waits",
    )
    max_unwritten: int = _setting(
        2000,
        _in_range(int, 1, 100_000),
        "attempts' results waiting to be written; beyond, ingest waits",
    )
    scheduler_interval_seconds: float = _setting(
        1.0, _in_range(float, 0.05, 60.0), "how often due retries are looked for"
    )
    delivery_ca_file: Path | None = _setting(
        None, _optional_path, "extra PEM CA bundle trusted for endpoints"
    )
    rotation_overlap_seconds: int = _setting(
        86_400, _in_range(int, 0, 7 * 86_400), "default life of the old secret after a rotation"
    )
    tls_cert_file: Path | None = _setting(None, _optional_path, "PEM certificate for gRPC TLS")
    tls_key_file: Path | None = _setting(None, _optional_path, "PEM private key for gRPC TLS")
    tls_client_ca_file: Path | None = _setting(
        None, _optional_path, "PEM CA bundle; when set, clients need a certificate (mTLS)"
    )
    metrics_address: str = _setting(
        "127.0.0.1:9464", _address_or_off, "Prometheus /metrics listen address, or off"
    )
    metrics_interval_seconds: float = _setting(
        5.0, _in_range(float, 0.1, 3600.0), "how often pending and outbox gauges are sampled"
    )
    retention_seconds: int = _setting(
        30 * 86_400,
        _in_range(int, 0, 10 * 365 * 86_400),
        "finished deliveries and events older than this are pruned; 0 = keep forever",
    )
    retention_interval_seconds: float = _setting(
        3600.0, _in_range(float, 0.1, 86_400.0), "how often retention pruning runs"
    )
    store_threads: int = _setting(
        4, _in_range(int, 1, 64), "threads running database work (PostgreSQL; SQLite uses 1)"
    )
    shutdown_drain_seconds: float = _setting(
        1.0,
        _in_range(float, 0.0, 60.0),
        "after SIGTERM, how long new calls get UNAVAILABLE before gRPC stops listening",
    )
    shutdown_grace_seconds: float = _setting(
        10.0, _in_range(float, 0.0, 300.0), "time in-flight calls get at shutdown"
    )
    log_level: str = _setting("INFO", _log_level, "DEBUG, INFO, WARNING or ERROR")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Reads and validates every setting; raises SettingsError listing all problems."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            name = PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                if f.default is None and f.name in _REQUIRED:
                    problems.append(f"{name} {_missing_message(f.metadata['parse'])}")
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                problems.append(f"{name} {exc}")
        unknown = sorted(
            k for k in env if k.startswith(PREFIX) and k[len(PREFIX) :].lower() not in _NAMES
        )
        problems += [f"{k} is not a known setting" for k in unknown]
        if not problems:
            settings = cls(**values)
            problems = settings._cross_checks()
            if not problems:
                return settings
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))

    def _cross_checks(self) -> list[str]:
        problems = []
        if self.delivery_lease_seconds < 2 * self.attempt_timeout_seconds:
            problems.append(
                "WEBHOOKS_DELIVERY_LEASE_SECONDS must be at least twice the attempt timeout"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            problems.append("WEBHOOKS_TLS_CERT_FILE and WEBHOOKS_TLS_KEY_FILE go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            problems.append("WEBHOOKS_TLS_CLIENT_CA_FILE needs WEBHOOKS_TLS_CERT_FILE")
        problems += self._kafka_checks()
        for name in (
            "kafka_ssl_ca_file",
            "kafka_ssl_cert_file",
            "kafka_ssl_key_file",
            "kafka_sasl_password_file",
            "api_keys_file",
            "event_types_file",
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "delivery_ca_file",
        ):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                problems.append(f"{PREFIX}{name.upper()} {path} is not a readable file")
        return problems

    def _kafka_checks(self) -> list[str]:
        """Kafka's security settings must form one whole: nothing set that would be ignored."""
        problems = []
        protocol, mechanism = self.kafka_security_protocol, self.kafka_sasl_mechanism
        tls, sasl = protocol in TLS_PROTOCOLS, protocol in SASL_PROTOCOLS
        ssl_files = (self.kafka_ssl_ca_file, self.kafka_ssl_cert_file, self.kafka_ssl_key_file)
        if not tls and any(ssl_files):
            problems.append("WEBHOOKS_KAFKA_SSL_* files need security protocol SSL or SASL_SSL")
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            problems.append(
                "WEBHOOKS_KAFKA_SSL_CERT_FILE and WEBHOOKS_KAFKA_SSL_KEY_FILE go together"
            )
        if sasl != bool(mechanism):
            problems.append(
                f"WEBHOOKS_KAFKA_SASL_MECHANISM {'is required with' if sasl else 'needs'}"
                " security protocol SASL_PLAINTEXT or SASL_SSL"
            )
        password = bool(self.kafka_sasl_password) + (self.kafka_sasl_password_file is not None)
        if password > 1:
            problems.append("set WEBHOOKS_KAFKA_SASL_PASSWORD or its _FILE, not both")
        oauth = (self.kafka_oauth_token_url, self.kafka_oauth_token_file)
        if mechanism == "OAUTHBEARER":
            if bool(oauth[0]) == (oauth[1] is not None):
                problems.append(
                    "OAUTHBEARER needs one of WEBHOOKS_KAFKA_OAUTH_TOKEN_URL and _TOKEN_FILE"
                )
            if oauth[0] and not (self.kafka_sasl_username and password):
                problems.append(
                    "WEBHOOKS_KAFKA_OAUTH_TOKEN_URL needs the client id and secret in"
                    " WEBHOOKS_KAFKA_SASL_USERNAME and WEBHOOKS_KAFKA_SASL_PASSWORD(_FILE)"
                )
        else:
            if any(oauth) or self.kafka_oauth_scope:
                problems.append("WEBHOOKS_KAFKA_OAUTH_* settings need SASL mechanism OAUTHBEARER")
            if mechanism and not (self.kafka_sasl_username and password):
                problems.append(
                    f"SASL {mechanism} needs WEBHOOKS_KAFKA_SASL_USERNAME and"
                    " WEBHOOKS_KAFKA_SASL_PASSWORD (or _FILE)"
                )
        if self.kafka_oauth_token_file is not None and not self.kafka_oauth_token_file.is_file():
            problems.append(
                f"WEBHOOKS_KAFKA_OAUTH_TOKEN_FILE {self.kafka_oauth_token_file}"
                " is not a readable file"
            )
        return problems

    def quota_for(self, tenant: str) -> int:
        """The tenant's subscription quota; 0 = unlimited."""
        return dict(self.tenant_quotas).get(tenant, self.subscription_quota)


def _missing_message(parse: Callable[[str], object]) -> str:
    try:
        parse("")
    except ValueError as exc:
        return str(exc)
    return "is required"


_REQUIRED = frozenset({"api_keys_file", "secret_encryption_keys"})
_NAMES = frozenset(f.name for f in fields(Settings))


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for the README and `--help`."""
    out = []
    for f in fields(Settings):
        default = "(required)" if f.name in _REQUIRED else _show(f.default)
        out.append((PREFIX + f.name.upper(), default, f.metadata["doc"]))
    return out


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v[0]}={v[1]}" if isinstance(v, tuple) else str(v) for v in value)
    return "" if value is None else str(value)
