"""The service on a secured Apache Kafka (tests/secured_kafka.py): the whole pipeline over
SASL_SSL with SCRAM-SHA-512 and SCRAM-SHA-256, SSL with client certificates, and
SASL_PLAINTEXT with PLAIN and with OAUTHBEARER; one clear line and exit 2 for a bad login or
a missing ACL; an ACL taken away while running; two deployments on one cluster that never
see each other's events."""

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apache_kafka import require_jars
from tests.pipeline_support import (
    Receiver,
    Record,
    Reply,
    audit_records,
    cloud_event,
    pipeline_env,
    produce,
    read_topic,
    structured,
    wait_all_delivered,
)
from tests.secured_kafka import (
    CREATE,
    DESCRIBE,
    GROUP,
    MTLS_CN,
    PLAIN_USERS,
    READ,
    SCRAM_USERS,
    TOPIC,
    WRITE,
    SecuredKafka,
    running,
    service_acls,
    unsecured_jwt,
)
from tests.support import ServiceProcess, process_env, run_command

pytestmark = [pytest.mark.slow, pytest.mark.apache_kafka, pytest.mark.xdist_group("kafka-secured")]

OAUTH_CLIENT = ("webhooks-client", "oauth-client-secret")
OAUTH_SUBJECT = "webhooks-oauth"


@pytest.fixture(scope="session")
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredKafka]:
    require_jars(request)
    with running(tmp_path_factory.mktemp("secured-kafka")) as kafka:
        yield kafka


@dataclass(frozen=True)
class Deployment:
    """One deployment's names on the shared cluster; its topics made by the super user
    unless `provisioned` is false (kafka-init makes them)."""

    group: str
    ingest: str
    audit: str
    dead_letter: str

    @property
    def topics(self) -> list[str]:
        return [self.ingest, self.audit, self.dead_letter]

    def env(self) -> dict[str, str]:
        return {
            "WEBHOOKS_KAFKA_GROUP_ID": self.group,
            "WEBHOOKS_KAFKA_TOPICS": self.ingest,
            "WEBHOOKS_KAFKA_AUDIT_TOPIC": self.audit,
            "WEBHOOKS_KAFKA_DEAD_LETTER_TOPIC": self.dead_letter,
        }


def _deployment(
    kafka: SecuredKafka, tmp_path: Path, name: str, provision: bool = True
) -> Deployment:
    prefix = f"{name}-{uuid.uuid4().hex[:8]}"
    deployment = Deployment(prefix, f"{prefix}.events", f"{prefix}.audit", f"{prefix}.dead")
    if provision:
        _kafka_init(tmp_path, kafka, "PLAINTEXT", deployment, {})
    return deployment


def _kafka_init(
    tmp_path: Path,
    kafka: SecuredKafka,
    listener: str,
    deployment: Deployment,
    security: dict[str, str],
) -> None:
    env = _service_env(tmp_path, kafka, listener, deployment) | security
    done = run_command("kafka-init", env | {"WEBHOOKS_KAFKA_PARTITIONS": "2"})
    assert done.returncode == 0, done.stderr


def _service_env(
    tmp_path: Path, kafka: SecuredKafka, listener: str, deployment: Deployment
) -> dict[str, str]:
    settings = pipeline_env(kafka, deployment.ingest) | deployment.env()
    settings["WEBHOOKS_KAFKA_BOOTSTRAP_SERVERS"] = kafka.address(listener)
    return process_env(tmp_path, f"sqlite:///{tmp_path / 'webhooks.db'}", **settings)


# How each login is set up: (listener, principal, settings) for the test's files.
Login = Callable[[SecuredKafka, Path, Receiver | None], tuple[str, str, dict[str, str]]]


def _scram(
    kafka: SecuredKafka, tmp_path: Path, receiver: Receiver | None = None
) -> tuple[str, str, dict[str, str]]:
    password = tmp_path / "kafka-password"
    password.write_text(SCRAM_USERS["alice"] + "\n")
    return (
        "SCRAM",
        "alice",
        {
            "WEBHOOKS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "WEBHOOKS_KAFKA_SSL_CA_FILE": str(kafka.pki.ca),
            "WEBHOOKS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "WEBHOOKS_KAFKA_SASL_USERNAME": "alice",
            "WEBHOOKS_KAFKA_SASL_PASSWORD_FILE": str(password),
        },
    )


def _mtls(
    kafka: SecuredKafka, tmp_path: Path, receiver: Receiver | None = None
) -> tuple[str, str, dict[str, str]]:
    return (
        "MTLS",
        MTLS_CN,
        {
            "WEBHOOKS_KAFKA_SECURITY_PROTOCOL": "SSL",
            "WEBHOOKS_KAFKA_SSL_CA_FILE": str(kafka.pki.ca),
            "WEBHOOKS_KAFKA_SSL_CERT_FILE": str(kafka.pki.client_cert),
            "WEBHOOKS_KAFKA_SSL_KEY_FILE": str(kafka.pki.client_key),
        },
    )


def _plain(
    kafka: SecuredKafka, tmp_path: Path, receiver: Receiver | None = None
) -> tuple[str, str, dict[str, str]]:
    return (
        "SASL",
        "bob",
        {
            "WEBHOOKS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "WEBHOOKS_KAFKA_SASL_MECHANISM": "PLAIN",
            "WEBHOOKS_KAFKA_SASL_USERNAME": "bob",
            "WEBHOOKS_KAFKA_SASL_PASSWORD": PLAIN_USERS["bob"],
        },
    )


def _oauth(
    kafka: SecuredKafka, tmp_path: Path, receiver: Receiver | None = None
) -> tuple[str, str, dict[str, str]]:
    assert receiver is not None  # it serves the token endpoint
    token = json.dumps({"access_token": unsecured_jwt(OAUTH_SUBJECT), "expires_in": 3600})
    url = receiver.reply("/token", Reply(200, {"content-type": "application/json"}, body=token))
    return (
        "SASL",
        OAUTH_SUBJECT,
        {
            "WEBHOOKS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "WEBHOOKS_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "WEBHOOKS_KAFKA_OAUTH_TOKEN_URL": url,
            "WEBHOOKS_KAFKA_OAUTH_SCOPE": "kafka",
            "WEBHOOKS_KAFKA_SASL_USERNAME": OAUTH_CLIENT[0],
            "WEBHOOKS_KAFKA_SASL_PASSWORD": OAUTH_CLIENT[1],
        },
    )


def _scram_256(
    kafka: SecuredKafka, tmp_path: Path, receiver: Receiver | None = None
) -> tuple[str, str, dict[str, str]]:
    listener, principal, security = _scram(kafka, tmp_path)
    return listener, principal, security | {"WEBHOOKS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"}


LOGINS: dict[str, Login] = {
    "SASL_SSL SCRAM-SHA-512": _scram,
    "SASL_SSL SCRAM-SHA-256": _scram_256,
    "SSL client certificate": _mtls,
    "SASL_PLAINTEXT PLAIN": _plain,
    "SASL_PLAINTEXT OAUTHBEARER": _oauth,
}
SECRETS = [*SCRAM_USERS.values(), *PLAIN_USERS.values(), OAUTH_CLIENT[1]]


def _no_secret_in(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, "a password reached the output"


def _run_pipeline(
    kafka: SecuredKafka,
    deployment: Deployment,
    service: ServiceProcess,
    receiver: Receiver,
    path: str,
) -> list[str]:
    """Events in (and one bad record), deliveries out, audit records and the dead letter
    written; returns the events' ids."""
    service.subscribe(receiver.url(path))
    events = [cloud_event("person.created", {"n": n}) for n in range(5)]
    bad: Record = (f"bad-{uuid.uuid4().hex[:6]}".encode(), b"{not json", [])
    produce(kafka.bootstrap, deployment.ingest, [*map(structured, events), bad])
    ids = [event["id"] for event in events]
    delivered = wait_all_delivered(receiver, path, ids, timeout=30)
    delivery_ids = {i for webhook_ids in delivered.values() for i in webhook_ids}
    audited = audit_records(
        kafka.bootstrap, delivery_ids, len(delivery_ids), timeout=30, topic=deployment.audit
    )
    assert {record.delivery_id for record in audited} == delivery_ids
    dead = read_topic(kafka.bootstrap, deployment.dead_letter, lambda records: len(records) >= 1)
    assert [record.key for record in dead] == [bad[0]]
    return ids


@pytest.mark.parametrize("login", list(LOGINS))
def test_the_pipeline_runs_over_each_login(
    login: str, tmp_path: Path, secured: SecuredKafka, receiver: Receiver
) -> None:
    listener, principal, security = LOGINS[login](secured, tmp_path, receiver)
    deployment = _deployment(secured, tmp_path, "pipeline")
    secured.grant(
        principal,
        *service_acls(
            deployment.group, [deployment.ingest], deployment.audit, deployment.dead_letter
        ),
    )
    env = _service_env(tmp_path, secured, listener, deployment) | security
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        _run_pipeline(secured, deployment, service, receiver, "/hooks")
    finally:
        service.stop()
    if login.endswith("OAUTHBEARER"):
        [asked, *_] = receiver.at("/token")
        assert asked.headers["Authorization"].startswith("Basic ")
        assert b"grant_type=client_credentials" in asked.body and b"scope=kafka" in asked.body
    _no_secret_in((tmp_path / "service.log").read_text())


def _bad_password(kafka: SecuredKafka, tmp_path: Path) -> tuple[str, dict[str, str]]:
    listener, _, security = _scram(kafka, tmp_path)
    (tmp_path / "kafka-password").write_text("not-alices-password")
    return listener, security


def _unknown_ca(kafka: SecuredKafka, tmp_path: Path) -> tuple[str, dict[str, str]]:
    listener, _, security = _scram(kafka, tmp_path)
    return listener, security | {"WEBHOOKS_KAFKA_SSL_CA_FILE": str(kafka.pki.other_ca)}


def _expired_certificate(kafka: SecuredKafka, tmp_path: Path) -> tuple[str, dict[str, str]]:
    listener, _, security = _mtls(kafka, tmp_path)
    return listener, security | {
        "WEBHOOKS_KAFKA_SSL_CERT_FILE": str(kafka.pki.expired_cert),
        "WEBHOOKS_KAFKA_SSL_KEY_FILE": str(kafka.pki.expired_key),
    }


def _expired_broker_certificate(kafka: SecuredKafka, tmp_path: Path) -> tuple[str, dict[str, str]]:
    return "EXPIRED", {
        "WEBHOOKS_KAFKA_SECURITY_PROTOCOL": "SSL",
        "WEBHOOKS_KAFKA_SSL_CA_FILE": str(kafka.pki.ca),
    }


def _wrong_host(kafka: SecuredKafka, tmp_path: Path) -> tuple[str, dict[str, str]]:
    return "OTHERHOST", {
        "WEBHOOKS_KAFKA_SECURITY_PROTOCOL": "SSL",
        "WEBHOOKS_KAFKA_SSL_CA_FILE": str(kafka.pki.ca),
    }


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (_bad_password, "the SASL SCRAM-SHA-512 login of 'alice' was refused"),
        (_unknown_ca, "TLS certificate was not accepted: unable to get local issuer certificate"),
        (_expired_certificate, "expired at"),
        (_expired_broker_certificate, "certificate has expired; the broker's certificate must"),
        (_wrong_host, "IP address mismatch, certificate is not valid for '127.0.0.1'"),
    ],
    ids=[
        "wrong password",
        "unknown CA",
        "expired client certificate",
        "expired broker certificate",
        "wrong host name",
    ],
)
def test_a_bad_login_stops_the_start_with_one_line(
    failure: Callable[[SecuredKafka, Path], tuple[str, dict[str, str]]],
    expected: str,
    tmp_path: Path,
    secured: SecuredKafka,
) -> None:
    listener, security = failure(secured, tmp_path)
    deployment = _deployment(secured, tmp_path, "login")
    env = _service_env(tmp_path, secured, listener, deployment) | security
    started = time.monotonic()
    done = run_command("serve", env)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("webhook-service: cannot start: ") and expected in line, line
    assert time.monotonic() - started < 30  # not a retry loop
    print(f"{failure.__name__}: {line}")
    _no_secret_in(done.stdout + done.stderr)
    assert "not-alices-password" not in done.stdout + done.stderr


@pytest.mark.parametrize("missing", ["group", "ingest", "audit", "dead_letter"])
def test_a_missing_acl_is_named_at_start(
    missing: str, tmp_path: Path, secured: SecuredKafka, receiver: Receiver
) -> None:
    deployment = _deployment(secured, tmp_path, "acl")
    every = service_acls(
        deployment.group, [deployment.ingest], deployment.audit, deployment.dead_letter
    )
    left_out = {"group": 0, "ingest": 1, "audit": 2, "dead_letter": 3}[missing]
    secured.grant("carol", *(acl for n, acl in enumerate(every) if n != left_out))
    security = {
        "WEBHOOKS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "WEBHOOKS_KAFKA_SASL_MECHANISM": "PLAIN",
        "WEBHOOKS_KAFKA_SASL_USERNAME": "carol",
        "WEBHOOKS_KAFKA_SASL_PASSWORD": PLAIN_USERS["carol"],
    }
    done = run_command("serve", _service_env(tmp_path, secured, "SASL", deployment) | security)
    kind, name, operation = every[left_out]
    what = f"{'READ' if operation == READ else 'WRITE'} on"
    what += f" {'group' if kind == GROUP else 'topic'} {name}"
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()[-1:]
    assert f"Kafka ACLs do not allow {what};" in line, line
    print(f"missing {missing}: {line}")
    _no_secret_in(done.stdout + done.stderr)


def test_two_deployments_on_one_cluster_keep_to_their_own_events(
    tmp_path: Path, secured: SecuredKafka, receiver: Receiver
) -> None:
    """Staging and production: own principal, group and topics, each made by its own
    `kafka-init` with only CREATE and DESCRIBE on them; the same event types flow in both."""
    services = {}
    deployments = {}
    for name in ("staging", "production"):
        home = tmp_path / name
        home.mkdir()
        deployment = deployments[name] = _deployment(secured, home, name, provision=False)
        security = {
            "WEBHOOKS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "WEBHOOKS_KAFKA_SASL_MECHANISM": "PLAIN",
            "WEBHOOKS_KAFKA_SASL_USERNAME": name,
            "WEBHOOKS_KAFKA_SASL_PASSWORD": PLAIN_USERS[name],
        }
        secured.grant(
            name,
            *(
                (TOPIC, topic, operation)
                for topic in deployment.topics
                for operation in (CREATE, DESCRIBE)
            ),
            *service_acls(
                deployment.group, [deployment.ingest], deployment.audit, deployment.dead_letter
            ),
        )
        _kafka_init(home, secured, "SASL", deployment, security)
        env = _service_env(home, secured, "SASL", deployment) | security
        services[name] = ServiceProcess(env, home / "service.log").start()
    try:
        ids = {
            name: _run_pipeline(secured, deployments[name], services[name], receiver, f"/{name}")
            for name in services
        }
        time.sleep(2)  # time enough for a stray delivery to arrive
        for name in services:
            seen = {r.json["id"] for r in receiver.at(f"/{name}")}
            assert seen == set(ids[name]), f"{name} delivered events that are not its own"
    finally:
        for service in services.values():
            service.stop()


def _wait_for_line(log: Path, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"the log never said {text!r}"
        time.sleep(0.1)


def test_an_acl_taken_away_while_running_is_logged_once_and_nothing_is_lost(
    tmp_path: Path, secured: SecuredKafka, receiver: Receiver
) -> None:
    """WRITE on the audit topic revoked mid-stream: deliveries go on, their audit records wait
    in the outbox, the log names the ACL once (not at every retry), and once it is granted
    again every record reaches the topic."""
    deployment = _deployment(secured, tmp_path, "revoked")
    acls = service_acls(
        deployment.group, [deployment.ingest], deployment.audit, deployment.dead_letter
    )
    secured.grant("erin", *acls)
    env = _service_env(tmp_path, secured, "SASL", deployment) | {
        "WEBHOOKS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "WEBHOOKS_KAFKA_SASL_MECHANISM": "PLAIN",
        "WEBHOOKS_KAFKA_SASL_USERNAME": "erin",
        "WEBHOOKS_KAFKA_SASL_PASSWORD": PLAIN_USERS["erin"],
    }
    log = tmp_path / "service.log"
    service = ServiceProcess(env, log).start()
    try:
        ids = _run_pipeline(secured, deployment, service, receiver, "/revoked")
        secured.revoke("erin", (TOPIC, deployment.audit, WRITE))
        later = [cloud_event("person.created", {"n": n}) for n in range(5)]
        produce(secured.bootstrap, deployment.ingest, [structured(event) for event in later])
        ids += [event["id"] for event in later]
        delivered = wait_all_delivered(receiver, "/revoked", ids, timeout=30)
        denied = f"Kafka ACLs do not allow WRITE on topic {deployment.audit}"
        _wait_for_line(log, denied)
        time.sleep(8)  # several outbox retries: 0.5, 1, 2 and 4 s apart
        said = [line for line in log.read_text().splitlines() if denied in line]
        # Once by the outbox, once by the direct audit path: never at every retry.
        assert 1 <= len(said) <= 2, said
        secured.grant("erin", (TOPIC, deployment.audit, WRITE))
        delivery_ids = {i for webhook_ids in delivered.values() for i in webhook_ids}
        audited = audit_records(
            secured.bootstrap, delivery_ids, len(delivery_ids), timeout=40, topic=deployment.audit
        )
        assert {record.delivery_id for record in audited} == delivery_ids
        # The outbox says when it publishes again, if a send of its own was refused (one
        # may instead wait out the refusal and go through once the ACL is back).
        if "audit outbox not published yet" in log.read_text():
            _wait_for_line(log, "audit outbox not published yet: working again")
    finally:
        service.stop()
