"""Endpoint verification: a signed ping that must get a 2xx before a URL is accepted."""

from datetime import datetime

import orjson

from service.domain.models import Event
from service.domain.outcomes import AttemptResult, ErrorKind

PING_EVENT_TYPE = "webhook.ping"

# Why a ping failed, as ErrorInfo metadata `cause` says it: the error kinds an answer or its
# absence can have.
CAUSES = {
    ErrorKind.TLS: "TLS",
    ErrorKind.DNS: "DNS",
    ErrorKind.CONNECTION: "CONNECT",
    ErrorKind.TIMEOUT: "TIMEOUT",
    ErrorKind.HTTP_STATUS: "HTTP_STATUS",
    ErrorKind.REDIRECT: "HTTP_STATUS",
    ErrorKind.SSRF_BLOCKED: "ADDRESS_NOT_ALLOWED",
}


def needed(*, requested: bool, mandatory: bool, url_changed: bool) -> bool:
    """A ping when the caller asks for one, or for a new URL where the operator requires it."""
    return requested or (mandatory and url_changed)


def ping_event(message_id: str, tenant: str, subscription_name: str, now: datetime) -> Event:
    """The ping, in the subscription's payload format like its deliveries; its data names the
    subscription being set up."""
    data = orjson.dumps({"subscription_name": subscription_name})
    return Event(message_id, PING_EVENT_TYPE, tenant, now, data)


def failure(result: AttemptResult, timeout_seconds: float) -> tuple[str, str] | None:
    """None for a 2xx answer; else the cause (see CAUSES) and a sentence for the caller."""
    if result.error_kind == ErrorKind.NONE and 200 <= result.http_status < 300:
        return None
    cause = CAUSES.get(result.error_kind, "CONNECT")
    detail = result.error_message
    if result.error_kind == ErrorKind.TLS:
        text = f"TLS certificate validation failed: {detail.removeprefix('TLS failed: ')}"
    elif result.error_kind == ErrorKind.DNS:
        text = f"the host name could not be resolved: {detail}"
    elif result.error_kind == ErrorKind.TIMEOUT:
        text = f"no answer within {timeout_seconds:g} s"
    elif result.error_kind in (ErrorKind.HTTP_STATUS, ErrorKind.REDIRECT) or (
        result.error_kind == ErrorKind.NONE
    ):
        cause = "HTTP_STATUS"
        text = f"the endpoint answered HTTP {result.http_status}; a 2xx is required"
        if 300 <= result.http_status < 400:
            text += " (redirects are not followed)"
    elif result.error_kind == ErrorKind.SSRF_BLOCKED:
        text = f"the endpoint's address is not allowed: {detail}"
    else:
        text = f"could not connect: {detail}"
    return cause, text
