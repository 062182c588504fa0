"""Kafka's security settings, the connection they make and the words for failures: pure
rules in tables, the token providers against a real HTTP server on loopback."""

import asyncio
import io
import json
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)

from kafka.connection import KafkaConnection, KafkaSecurity
from kafka.failures import login_failure, running_failure
from kafka.oauth import ClientCredentials, TokenFile, TokenUnavailable
from service import cli
from service.app import kafka_connection
from service.config import Settings, SettingsError
from service.crypto import new_encryption_key
from service.logs import Outage, QuietRepeats
from tests.pipeline_support import Receiver, Reply

PASSWORD = "s3cret-kafka-password"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}')
    for name in ("ca.pem", "client.pem", "client.key", "password", "token"):
        (tmp_path / name).write_text("x")
    return {
        "WEBHOOKS_API_KEYS_FILE": str(keys),
        "WEBHOOKS_SECRET_ENCRYPTION_KEYS": new_encryption_key(),
        **{f"WEBHOOKS_{k}": v.replace("$T", str(tmp_path)) for k, v in extra.items()},
    }


SCRAM = {
    "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "KAFKA_SASL_MECHANISM": "scram-sha-512",
    "KAFKA_SASL_USERNAME": "alice",
    "KAFKA_SASL_PASSWORD": PASSWORD,
}


@pytest.mark.parametrize(
    "settings",
    [
        {},
        SCRAM,
        SCRAM | {"KAFKA_SSL_CA_FILE": "$T/ca.pem", "KAFKA_SSL_CHECK_HOSTNAME": "false"},
        {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CERT_FILE": "$T/client.pem",
            "KAFKA_SSL_KEY_FILE": "$T/client.key",
        },
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "bob",
            "KAFKA_SASL_PASSWORD_FILE": "$T/password",
        },
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "KAFKA_OAUTH_TOKEN_URL": "https://idp.example/token",
            "KAFKA_OAUTH_SCOPE": "kafka",
            "KAFKA_SASL_USERNAME": "client",
            "KAFKA_SASL_PASSWORD": PASSWORD,
        },
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "KAFKA_OAUTH_TOKEN_FILE": "$T/token",
        },
    ],
    ids=[
        "plaintext",
        "scram",
        "scram with CA",
        "mtls",
        "plain from file",
        "oauth url",
        "oauth file",
    ],
)
def test_valid_kafka_security_settings(tmp_path: Path, settings: dict[str, str]) -> None:
    parsed = Settings.from_env(_env(tmp_path, **settings))
    assert PASSWORD not in repr(parsed)
    assert parsed.secret_encryption_keys[0] not in repr(parsed)
    connection = kafka_connection(parsed)
    assert PASSWORD not in repr(connection) and PASSWORD not in connection.describe()


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "must be one of PLAINTEXT, SSL"),
        ({"KAFKA_SSL_CA_FILE": "$T/ca.pem"}, "need security protocol SSL or SASL_SSL"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": "$T/client.pem"},
            "WEBHOOKS_KAFKA_SSL_CERT_FILE and WEBHOOKS_KAFKA_SSL_KEY_FILE go together",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "$T/missing.pem"},
            "WEBHOOKS_KAFKA_SSL_CA_FILE",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "WEBHOOKS_KAFKA_SASL_MECHANISM is required"),
        ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "WEBHOOKS_KAFKA_SASL_MECHANISM needs security"),
        (SCRAM | {"KAFKA_SASL_MECHANISM": "GSSAPI"}, "must be one of PLAIN, SCRAM-SHA-256"),
        (SCRAM | {"KAFKA_SASL_USERNAME": ""}, "SASL SCRAM-SHA-512 needs"),
        (SCRAM | {"KAFKA_SASL_PASSWORD_FILE": "$T/password"}, "not both"),
        (SCRAM | {"KAFKA_OAUTH_SCOPE": "x"}, "need SASL mechanism OAUTHBEARER"),
        (SCRAM | {"KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "OAUTHBEARER needs one of"),
        (
            SCRAM
            | {
                "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                "KAFKA_OAUTH_TOKEN_URL": "http://idp.example/token",
            },
            "must be an https:// URL",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                "KAFKA_OAUTH_TOKEN_URL": "https://idp.example/token",
            },
            "needs the client id and secret",
        ),
    ],
)
def test_invalid_kafka_security_settings(
    tmp_path: Path, settings: dict[str, str], problem: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(_env(tmp_path, **settings))
    assert problem in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_the_settings_command_never_prints_a_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WEBHOOKS_KAFKA_SASL_PASSWORD", PASSWORD)
    assert cli.main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "WEBHOOKS_KAFKA_SASL_PASSWORD=" in out and PASSWORD not in out


@pytest.mark.parametrize(
    ("security", "expected"),
    [
        (KafkaSecurity(), {"security_protocol": "PLAINTEXT", "ssl_context": None}),
        (
            KafkaSecurity(
                "SASL_PLAINTEXT", mechanism="PLAIN", username="bob", password=lambda: "pw"
            ),
            {"sasl_mechanism": "PLAIN", "sasl_plain_username": "bob", "sasl_plain_password": "pw"},
        ),
        (
            KafkaSecurity("SASL_SSL", mechanism="OAUTHBEARER", token_provider=TokenFile(Path("t"))),
            {"sasl_mechanism": "OAUTHBEARER"},
        ),
    ],
    ids=["plaintext", "plain", "oauthbearer"],
)
def test_connection_options(security: KafkaSecurity, expected: dict[str, object]) -> None:
    options = KafkaConnection("a:1,b:2", "me", security).options()
    assert options["bootstrap_servers"] == "a:1,b:2" and options["client_id"] == "me"
    assert {k: options[k] for k in expected} == expected
    if security.mechanism == "OAUTHBEARER":
        assert options["sasl_oauth_token_provider"] is security.token_provider
        assert "sasl_plain_password" not in options
    if security.tls:
        assert isinstance(options["ssl_context"], ssl.SSLContext)


def test_tls_context_checks_host_names_unless_told_not_to() -> None:
    assert KafkaSecurity("SSL").ssl_context().check_hostname  # type: ignore[union-attr]
    unchecked = KafkaSecurity("SSL", check_hostname=False).ssl_context()
    assert unchecked is not None and not unchecked.check_hostname
    assert unchecked.verify_mode == ssl.CERT_REQUIRED  # the chain is still verified


SCRAM_CONNECTION = KafkaConnection(
    "k:9093", security=KafkaSecurity("SASL_SSL", mechanism="SCRAM-SHA-512", username="alice")
)


def _closed_by(cause: BaseException) -> KafkaConnectionError:
    error = KafkaConnectionError("Connection at k:9093 closed")
    error.__cause__ = cause
    return error


def _verify_failed(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, message)
    error.verify_message = message
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (SaslAuthenticationFailed("invalid credentials"), "login of 'alice' was refused"),
        (UnsupportedSaslMechanismError(), "does not offer SASL SCRAM-SHA-512"),
        (TokenUnavailable("the token endpoint answered HTTP 401"), "no OAUTHBEARER token"),
        (_verify_failed("certificate has expired"), "must be renewed"),
        (_verify_failed("Hostname mismatch"), "a name the certificate gives"),
        (_verify_failed("unable to get local issuer certificate"), "WEBHOOKS_KAFKA_SSL_CA_FILE"),
        (
            _closed_by(ssl.SSLError(1, "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] alert")),
            "refused the TLS handshake",
        ),
        (ConnectionResetError(), "does the listener use security protocol SASL_SSL?"),
        (asyncio.IncompleteReadError(b"", 4), "does the listener use security protocol"),
        (ConnectionRefusedError(111, "Connection refused"), "cannot connect (Connection refused)"),
        (TimeoutError(), "no answer within 10 s"),
    ],
)
def test_login_failures_in_words(error: BaseException, expected: str) -> None:
    assert expected in login_failure(SCRAM_CONNECTION, error)


@pytest.mark.parametrize(
    ("error", "operation", "expected"),
    [
        (TopicAuthorizationFailedError("audit"), "WRITE", "do not allow WRITE on topic audit"),
        (TopicAuthorizationFailedError({"b", "a"}), "READ", "do not allow READ on topic a, b"),
        (GroupAuthorizationFailedError("g"), "READ", "do not allow READ on group g"),
        (KafkaConnectionError("x"), "WRITE", "KafkaConnectionError"),
    ],
)
def test_running_failures_in_words(error: BaseException, operation: str, expected: str) -> None:
    assert expected in running_failure(SCRAM_CONNECTION, error, operation)


def test_a_token_file_is_read_at_each_connection(tmp_path: Path) -> None:
    path = tmp_path / "token"
    provider = TokenFile(path)
    with pytest.raises(TokenUnavailable, match="cannot read the token file"):
        asyncio.run(provider.token())
    path.write_text("first\n")
    assert asyncio.run(provider.token()) == "first"
    path.write_text("second")
    assert asyncio.run(provider.token()) == "second"
    path.write_text("")
    with pytest.raises(TokenUnavailable, match="is empty"):
        asyncio.run(provider.token())


@pytest.fixture
def token_endpoint() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def test_client_credentials_are_sent_and_the_token_reused(token_endpoint: Receiver) -> None:
    body = json.dumps({"access_token": "tok-1", "expires_in": 3600})
    url = token_endpoint.reply("/token", Reply(200, body=body))
    provider = ClientCredentials(url, "client id", lambda: "p@ss:word", "kafka")

    async def twice() -> list[str]:
        return [await provider.token(), await provider.token()]

    assert asyncio.run(twice()) == ["tok-1", "tok-1"]
    [asked] = token_endpoint.at("/token")  # the second call reused the token
    # Basic credentials are form-encoded first (RFC 6749 2.3.1): "client%20id:p%40ss%3Aword".
    assert asked.headers["Authorization"] == "Basic Y2xpZW50JTIwaWQ6cCU0MHNzJTNBd29yZA=="
    assert asked.body == b"grant_type=client_credentials&scope=kafka"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(401, body="no"), "answered HTTP 401"),
        (Reply(200, body="{}"), "sent no access_token"),
        (Reply(200, body="not json"), "failed: JSONDecodeError"),
    ],
)
def test_client_credentials_failures_name_no_secret(
    token_endpoint: Receiver, reply: Reply, expected: str
) -> None:
    url = token_endpoint.reply("/token", reply)
    provider = ClientCredentials(url, "client", lambda: PASSWORD)
    with pytest.raises(TokenUnavailable) as raised:
        asyncio.run(provider.token())
    assert expected in str(raised.value) and PASSWORD not in str(raised.value)


def test_an_outage_is_logged_when_it_starts_changes_and_ends() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.outage")
    logger.addHandler(logging.StreamHandler(stream))
    logger.setLevel(logging.INFO)
    outage = Outage(logger, "thing failing")
    for cause in ["down", "down", "down", "denied", "denied"]:
        outage.failed(cause)
    outage.ended()
    outage.ended()
    assert stream.getvalue().splitlines() == [
        "thing failing",
        "thing failing",
        "thing failing: working again",
    ]


def test_aiokafka_lines_pass_once_per_window() -> None:
    quiet = QuietRepeats(window=60)

    def record(name: str, message: str) -> logging.LogRecord:
        return logging.makeLogRecord({"name": name, "msg": message})

    passed = [
        quiet.filter(record(name, message))
        for name, message in [
            ("aiokafka.cluster", "Topic t is not authorized"),
            ("aiokafka.cluster", "Topic t is not authorized"),
            ("aiokafka.cluster", "Topic u is not authorized"),
            ("service.app", "same"),
            ("service.app", "same"),
        ]
    ]
    assert passed == [True, False, True, True, True]
