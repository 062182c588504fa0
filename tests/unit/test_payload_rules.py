"""Payload formats and templates: what each body looks like, and what a template may say."""

import json
from datetime import datetime

import pytest

from service.domain import payloads
from service.domain.models import Event, Payload, PayloadFormat

EVENT = Event(
    id="evt_1",
    type="person.created",
    tenant="acme",
    time=datetime(2026, 1, 2, 3, 4, 5),
    data=b'{"name":"Ann \\"A\\"","org":{"id":7},"tags":["a"]}',
    source="/crm",
)
AT = 1767323045.25  # 2026-01-02T03:04:05.25Z


def _template(text: str) -> Payload:
    return Payload(PayloadFormat.TEMPLATE, text)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            Payload(),
            {
                "id": "evt_1",
                "type": "person.created",
                "timestamp": "2026-01-02T03:04:05.000000Z",
                "tenant": "acme",
                "data": {"name": 'Ann "A"', "org": {"id": 7}, "tags": ["a"]},
            },
        ),
        (Payload(PayloadFormat.DATA), {"name": 'Ann "A"', "org": {"id": 7}, "tags": ["a"]}),
        (
            Payload(PayloadFormat.CLOUDEVENTS),
            {
                "specversion": "1.0",
                "id": "evt_1",
                "source": "/crm",
                "type": "person.created",
                "time": "2026-01-02T03:04:05.000000Z",
                "datacontenttype": "application/json",
                "tenant": "acme",
                "data": {"name": 'Ann "A"', "org": {"id": 7}, "tags": ["a"]},
            },
        ),
        # Seed 003's envelope.
        (
            _template('{"type": "{{type}}", "body": "{{data}}", "sent_at": "{{sent_at}}"}'),
            {
                "type": "person.created",
                "body": {"name": 'Ann "A"', "org": {"id": 7}, "tags": ["a"]},
                "sent_at": 1767323045,
            },
        ),
        (
            _template(
                '{"msg": "{{data.name}} joined {{tenant}} at {{sent_at_rfc3339}}",'
                ' "org": "{{ data.org.id }}", "none": "{{data.org.missing}}",'
                ' "list": ["{{id}}", 1, true, null], "when": "{{timestamp}}",'
                ' "tags": "{{data.tags}}"}'
            ),
            {
                "msg": 'Ann "A" joined acme at 2026-01-02T03:04:05.250000Z',
                "org": 7,
                "none": None,
                "list": ["evt_1", 1, True, None],
                "when": "2026-01-02T03:04:05.000000Z",
                "tags": ["a"],
            },
        ),
        (_template('["text with {{data.org}} in it"]'), ['text with {"id":7} in it']),
        (
            _template('{"at": "{{sent_at}}", "iso": "{{sent_at_rfc3339}}", "n": "{{sent_at}}"}'),
            {"at": 1767323045, "iso": "2026-01-02T03:04:05.250000Z", "n": 1767323045},
        ),
    ],
)
def test_each_format_renders_the_event(payload: Payload, expected: object) -> None:
    body = payloads.stamp(payloads.render(payload, EVENT), AT)
    assert json.loads(body) == expected


def test_the_attempt_time_is_filled_in_at_each_attempt() -> None:
    body = payloads.render(_template('{"sent_at": "{{sent_at}}"}'), EVENT)
    assert json.loads(payloads.stamp(body, 100.9)) == {"sent_at": 100}
    assert json.loads(payloads.stamp(body, 200.0)) == {"sent_at": 200}
    plain = payloads.render(Payload(), EVENT)
    assert payloads.stamp(plain, 1.0) is plain  # nothing to fill: the same bytes


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (_template('{"a": {"b": ["{{secret}}"]}}'), "at $.a.b[0]: unknown placeholder {{secret}}"),
        (_template('{"a": "{{data.}}"}'), "unknown placeholder {{data.}}"),
        (_template('{"a": '), "is not valid JSON"),
        (_template('"{{data}}"'), "must be a JSON object or array"),
        (_template(""), "is required with payload_format TEMPLATE"),
        (_template('{"a": "' + "x" * 10_001 + '"}'), "at most 10000 characters"),
        (_template('{"a": "\\u0000"}'), "control characters"),
        (Payload(PayloadFormat.DATA, '{"a": 1}'), "only for payload_format TEMPLATE"),
    ],
)
def test_a_bad_template_is_refused_where_it_is_wrong(payload: Payload, problem: str) -> None:
    [violation] = payloads.validate(payload)
    assert violation.field == "subscription.payload_template"
    assert problem in violation.description


def test_content_types() -> None:
    assert Payload(PayloadFormat.CLOUDEVENTS).content_type == "application/cloudevents+json"
    assert Payload().content_type == "application/json"
