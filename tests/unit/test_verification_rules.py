"""When an endpoint is pinged, and how a ping's result reads to the caller."""

import json
from datetime import datetime

import pytest

from service.domain import payloads, verification
from service.domain.models import Payload
from service.domain.outcomes import AttemptResult, ErrorKind


@pytest.mark.parametrize(
    ("requested", "mandatory", "url_changed", "needed"),
    [
        (True, False, False, True),  # asked for: always
        (False, False, True, False),  # a new URL, nobody asked
        (False, True, True, True),  # the operator requires it for new URLs
        (False, True, False, False),  # ...not for a description change
    ],
)
def test_when_a_ping_is_needed(
    requested: bool, mandatory: bool, url_changed: bool, needed: bool
) -> None:
    assert (
        verification.needed(requested=requested, mandatory=mandatory, url_changed=url_changed)
        == needed
    )


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (AttemptResult(http_status=200), None),
        (AttemptResult(http_status=204), None),
        (
            AttemptResult(http_status=500, error_kind=ErrorKind.HTTP_STATUS),
            ("HTTP_STATUS", "answered HTTP 500"),
        ),
        (
            AttemptResult(http_status=301, error_kind=ErrorKind.REDIRECT),
            ("HTTP_STATUS", "redirects are not followed"),
        ),
        (
            AttemptResult(error_kind=ErrorKind.TLS, error_message="TLS failed: expired"),
            ("TLS", "TLS certificate validation failed: expired"),
        ),
        (AttemptResult(error_kind=ErrorKind.DNS, error_message="x"), ("DNS", "not be resolved")),
        (AttemptResult(error_kind=ErrorKind.TIMEOUT), ("TIMEOUT", "no answer within 2.5 s")),
        (
            AttemptResult(error_kind=ErrorKind.CONNECTION, error_message="refused"),
            ("CONNECT", "could not connect: refused"),
        ),
        (
            AttemptResult(error_kind=ErrorKind.SSRF_BLOCKED, error_message="private"),
            ("ADDRESS_NOT_ALLOWED", "not allowed: private"),
        ),
        (AttemptResult(error_kind=ErrorKind.INTERNAL, error_message="bug"), ("CONNECT", "bug")),
    ],
)
def test_what_a_failed_ping_says(result: AttemptResult, expected: tuple[str, str] | None) -> None:
    found = verification.failure(result, timeout_seconds=2.5)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert found[0] == expected[0] and expected[1] in found[1]


def test_the_ping_is_the_default_envelope_of_webhook_ping() -> None:
    ping = verification.ping_event("msg_1", "acme", 'say "hi"', datetime(2026, 1, 2, 3, 4, 5))
    assert json.loads(payloads.render(Payload(), ping)) == {
        "id": "msg_1",
        "type": "webhook.ping",
        "timestamp": "2026-01-02T03:04:05.000000Z",
        "tenant": "acme",
        "data": {"subscription_name": 'say "hi"'},
    }
