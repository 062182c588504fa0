"""What a Kafka error means, in words an operator can act on: for the start checks and for
the retry loops' logs. Never a secret: user names yes, passwords and tokens no."""

import ssl

from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)

from kafka.connection import KafkaConnection
from kafka.oauth import TokenUnavailable

TIMEOUT_SECONDS = 10.0


def login_failure(connection: KafkaConnection, exc: BaseException) -> str:
    """Why a connection and login failed, in words an operator can act on."""
    security = connection.security
    cause = exc.__cause__ if isinstance(exc, KafkaConnectionError) and exc.__cause__ else exc
    if isinstance(cause, SaslAuthenticationFailed):
        return (
            f"the SASL {security.mechanism} login of {security.username!r} was refused"
            f" ({_broker_message(cause)}); check WEBHOOKS_KAFKA_SASL_USERNAME and the password"
        )
    if isinstance(cause, UnsupportedSaslMechanismError):
        return f"this listener does not offer SASL {security.mechanism}"
    if isinstance(cause, TokenUnavailable):
        return f"no OAUTHBEARER token: {cause}"
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = (cause.verify_message or str(cause)).rstrip(".")
        if "mismatch" in reason or "hostname" in reason.lower():
            hint = "the bootstrap address must be a name the certificate gives"
        elif "expired" in reason:
            hint = "the broker's certificate must be renewed"
        else:
            hint = "check WEBHOOKS_KAFKA_SSL_CA_FILE names the CA that signed it"
        return f"the broker's TLS certificate was not accepted: {reason}; {hint}"
    if isinstance(cause, ssl.SSLError):
        reason = getattr(cause, "reason", None) or str(cause)
        if "ALERT" in reason:
            hint = (
                "check WEBHOOKS_KAFKA_SSL_CERT_FILE is signed by a CA the broker trusts"
                if security.cert_file is not None
                else "the listener may want a client certificate (WEBHOOKS_KAFKA_SSL_CERT_FILE)"
            )
            return f"the broker refused the TLS handshake ({reason}); {hint}"
        return (
            f"TLS failed ({reason}); does the listener use security protocol {security.protocol}?"
        )
    if isinstance(cause, TimeoutError):
        return f"no answer within {TIMEOUT_SECONDS:g} s"
    if isinstance(cause, ConnectionResetError | EOFError | KafkaConnectionError):
        return (
            f"the connection was closed during the handshake; does the listener use"
            f" security protocol {security.protocol}?"
        )
    if isinstance(cause, OSError):
        return f"cannot connect ({cause.strerror or type(cause).__name__})"
    return f"cannot connect ({type(cause).__name__})"


def _broker_message(exc: KafkaError) -> str:
    return str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else type(exc).__name__


def running_failure(connection: KafkaConnection, exc: BaseException, operation: str) -> str:
    """A failure met while running: the ACL or the login that refused, else the error's name.
    `operation` is what was being done (READ or WRITE) when a topic was refused."""
    if isinstance(exc, TopicAuthorizationFailedError):
        return f"Kafka ACLs do not allow {operation} on topic {_names(exc)}"
    if isinstance(exc, GroupAuthorizationFailedError):
        return f"Kafka ACLs do not allow READ on group {_names(exc)}"
    if isinstance(exc, SaslAuthenticationFailed | UnsupportedSaslMechanismError | TokenUnavailable):
        return login_failure(connection, exc)
    if isinstance(exc.__cause__, ssl.SSLError):
        return login_failure(connection, exc)
    return type(exc).__name__


def _names(exc: KafkaError) -> str:
    """The topic or group an aiokafka authorization error carries (a name or a set)."""
    found = exc.args[0] if exc.args else "?"
    if isinstance(found, set | frozenset | list | tuple):
        return ", ".join(sorted(map(str, found)))
    return str(found)
