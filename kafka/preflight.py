"""What `serve` and `kafka-init` check before they start, each failure one line that says
what to fix: the login (TLS and SASL), that the service's topics exist, and that the ACLs
let the service's principal do its work.

aiokafka reports a failed bootstrap only as "Unable to bootstrap", so the login is tried on
one connection of our own to read its cause. It also lacks the requests that return the
operations a principal may do (Metadata v8, DescribeGroups v3 with its response): they are
declared here in aiokafka's protocol types."""

import asyncio
import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError
from aiokafka.protocol.admin import DescribeGroupsResponse_v3
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String
from cryptography import x509

from kafka.connection import KafkaConnection
from kafka.failures import TIMEOUT_SECONDS, login_failure
from service.errors import StartupError

# Kafka's AclOperation codes, as bits of an "authorized operations" field.
READ, WRITE = 3, 4
OPERATION_NAMES = {READ: "READ", WRITE: "WRITE"}
# The field's value when the broker did not compute it (tansu, for one): nothing to check.
NOT_PROVIDED = -(2**31)
TOPIC_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED, UNKNOWN_TOPIC = 29, 30, 3


@dataclass(frozen=True)
class Needs:
    """What the service does on the cluster: consume `read` topics in `group`, produce to
    `write` topics."""

    read: Sequence[str]
    write: Sequence[str]
    group: str | None

    @property
    def topics(self) -> list[str]:
        return list(dict.fromkeys([*self.read, *self.write]))


async def check(connection: KafkaConnection, needs: Needs) -> None:
    """Raises StartupError naming the first thing that stops the service working."""
    await check_login(connection)
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS * 2):
            problems = await _access_problems(connection, needs)
    except (KafkaError, TimeoutError, OSError) as exc:
        raise StartupError(
            f"Kafka at {connection.describe()}: cannot read topic metadata ({type(exc).__name__})"
        ) from None
    if problems:
        raise StartupError(problems[0] if len(problems) == 1 else "; ".join(problems))


def check_client_certificate(connection: KafkaConnection) -> None:
    """An expired client certificate, said plainly: the broker only answers "certificate
    unknown"."""
    path = connection.security.cert_file
    if path is None or not connection.security.tls:
        return
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        raise StartupError(
            f"WEBHOOKS_KAFKA_SSL_CERT_FILE {path} is not a PEM certificate"
        ) from None
    now = datetime.datetime.now(datetime.UTC)
    if certificate.not_valid_after_utc < now:
        raise StartupError(
            f"WEBHOOKS_KAFKA_SSL_CERT_FILE {path} expired at"
            f" {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if certificate.not_valid_before_utc > now:
        raise StartupError(
            f"WEBHOOKS_KAFKA_SSL_CERT_FILE {path} is not valid before"
            f" {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


async def check_login(connection: KafkaConnection) -> None:
    """Connects and logs in to the bootstrap servers in turn until one accepts; raises
    StartupError with the cause the first one gave (an expired client certificate first)."""
    check_client_certificate(connection)
    options = connection.options()
    first: str | None = None
    for host, port in connection.servers:
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                conn = await create_conn(
                    host,
                    port,
                    client_id=options["client_id"],
                    request_timeout_ms=int(TIMEOUT_SECONDS * 1000),
                    ssl_context=options["ssl_context"],
                    security_protocol=options["security_protocol"],
                    sasl_mechanism=options.get("sasl_mechanism"),
                    sasl_plain_username=options.get("sasl_plain_username"),
                    sasl_plain_password=options.get("sasl_plain_password"),
                    sasl_oauth_token_provider=options.get("sasl_oauth_token_provider"),
                )
        except Exception as exc:  # each cause is named below; none may escape unexplained
            first = first or f"Kafka at {host}:{port}: {login_failure(connection, exc)}"
            continue
        conn.close()
        return
    raise StartupError(first or "WEBHOOKS_KAFKA_BOOTSTRAP_SERVERS names no server")


async def _access_problems(connection: KafkaConnection, needs: Needs) -> list[str]:
    admin = AIOKafkaAdminClient(**connection.options(), request_timeout_ms=10_000)
    await admin.start()
    try:
        metadata = await admin._send_request(_AuthorizedMetadata(needs.topics))
        missing, denied = _topic_problems(metadata.topics, needs)
        if needs.group is not None and not await _may_read_group(admin, needs.group):
            denied.append(f"READ on group {needs.group}")
    finally:
        await admin.close()
    problems = []
    if denied:
        problems.append(
            f"Kafka ACLs do not allow {', '.join(denied)}; grant them to the service's"
            " principal (README: Running on your Kafka)"
        )
    if missing:
        problems.append(
            f"Kafka topics missing: {', '.join(missing)}; create them with"
            " `webhook-service kafka-init`"
        )
    return problems


def _topic_problems(described: list[tuple[Any, ...]], needs: Needs) -> tuple[list[str], list[str]]:
    """(missing topics, denied operations)."""
    missing, denied = [], []
    for error, name, _internal, _partitions, allowed in described:
        if error == UNKNOWN_TOPIC:
            missing.append(name)
        elif error == TOPIC_AUTHORIZATION_FAILED:
            denied.append(f"{_wanted(name, needs)} on topic {name}")
        elif allowed != NOT_PROVIDED:
            denied += [
                f"{OPERATION_NAMES[operation]} on topic {name}"
                for operation in _operations(name, needs)
                if not allowed & (1 << operation)
            ]
    return missing, denied


async def _may_read_group(admin: AIOKafkaAdminClient, group: str) -> bool:
    while True:  # a new cluster makes its offsets topic at the first FindCoordinator
        try:
            coordinator = await admin.find_coordinator(group)
            break
        except GroupAuthorizationFailedError:
            return False
        except KafkaError as exc:
            if not exc.retriable:
                raise
            await asyncio.sleep(0.2)
    response = await admin._send_request_to_node(coordinator, _AuthorizedGroups([group]))
    [(error, *_, allowed)] = response.groups
    if error == GROUP_AUTHORIZATION_FAILED:
        return False
    return allowed == NOT_PROVIDED or bool(allowed & (1 << READ))


def _operations(topic: str, needs: Needs) -> list[int]:
    wanted = []
    if topic in needs.read:
        wanted.append(READ)
    if topic in needs.write:
        wanted.append(WRITE)
    return wanted


def _wanted(topic: str, needs: Needs) -> str:
    return " and ".join(OPERATION_NAMES[o] for o in _operations(topic, needs)) or "DESCRIBE"


class _MetadataResponse_v8(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            Array(
                ("node_id", Int32),
                ("host", String("utf-8")),
                ("port", Int32),
                ("rack", String("utf-8")),
            ),
        ),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("topic", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition", Int32),
                        ("leader", Int32),
                        ("leader_epoch", Int32),
                        ("replicas", Array(Int32)),
                        ("isr", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("topic_authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequest_v8(RequestStruct):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponse_v8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class _AuthorizedMetadata(Request[_MetadataRequest_v8]):  # type: ignore[misc]
    """Metadata of the named topics with the operations this principal may do on each."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataRequest_v8]) -> _MetadataRequest_v8:
        return request_struct_class(self._topics, False, False, True)


class _DescribeGroupsRequest_v3(RequestStruct):  # type: ignore[misc]
    # aiokafka 0.14 pairs its v3 request with the v2 response, which drops the field.
    API_KEY = 15
    API_VERSION = 3
    RESPONSE_TYPE = DescribeGroupsResponse_v3
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


class _AuthorizedGroups(Request[_DescribeGroupsRequest_v3]):  # type: ignore[misc]
    """The group with the operations this principal may do on it."""

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(
        self, request_struct_class: type[_DescribeGroupsRequest_v3]
    ) -> _DescribeGroupsRequest_v3:
        return request_struct_class(self._groups, True)
