"""Ordered delivery's rules: what an event's ordering key is (service.domain.ordering and the
Kafka decoder), and which subscriptions' jobs carry it (fan-out)."""

import hashlib
import json
from datetime import UTC, datetime

import pytest

from kafka.codec import decode_event
from service.domain import fan_out
from service.domain.models import Event, Ordering
from service.domain.ordering import is_ordered, ordering_key


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (None, ""),
        (b"", ""),
        ("", ""),
        (b"customer-42", "customer-42"),
        ("customer-42", "customer-42"),
        ("kunde-ü-42".encode(), "kunde-ü-42"),
        (b"x" * 255, "x" * 255),
        (b"x" * 256, _digest(b"x" * 256)),  # too long for the column: its digest
        (b"\xff\xfe", _digest(b"\xff\xfe")),  # not UTF-8
        (b"a\x00b", _digest(b"a\x00b")),  # NUL: no text column holds it
        ("tab\there", _digest(b"tab\there")),
    ],
)
def test_the_ordering_key_is_the_text_or_its_digest(raw: bytes | str | None, key: str) -> None:
    assert ordering_key(raw) == key


@pytest.mark.parametrize(
    ("ordering", "ordered"),
    [
        (Ordering.NONE, False),
        (Ordering.PER_KEY, True),
        (Ordering.PER_KEY_HOLD, True),
    ],
)
def test_which_orderings_keep_order(ordering: Ordering, ordered: bool) -> None:
    assert is_ordered(ordering) is ordered


def _structured(**extra: str) -> bytes:
    event = {"specversion": "1.0", "id": "e1", "type": "person.created", "source": "s"}
    return json.dumps(event | {"data": {}} | extra).encode()


@pytest.mark.parametrize(
    ("value", "headers", "key"),
    [
        (_structured(), [("content-type", b"application/cloudevents+json")], ""),
        (
            _structured(partitionkey="order-7"),
            [("content-type", b"application/cloudevents+json")],
            "order-7",
        ),
        (
            b"{}",
            [
                ("content-type", b"application/json"),
                ("ce_specversion", b"1.0"),
                ("ce_id", b"e1"),
                ("ce_type", b"person.created"),
                ("ce_source", b"s"),
                ("ce_partitionkey", b"order-8"),
            ],
            "order-8",
        ),
    ],
)
def test_the_partitionkey_extension_is_read_in_both_modes(
    value: bytes, headers: list[tuple[str, bytes]], key: str
) -> None:
    event = decode_event(value, headers, default_tenant="acme", max_bytes=10_000)
    assert event.ordering_key == key


def test_only_ordered_subscriptions_jobs_carry_the_key() -> None:
    event = Event(
        "e1", "person.created", "acme", datetime(2026, 1, 1, tzinfo=UTC), b"{}", ordering_key="k"
    )
    subs = {
        "acme": [
            fan_out.Matcher("plain", (), frozenset()),
            fan_out.Matcher("ordered", (), frozenset(), ordered=True),
        ]
    }
    jobs = fan_out.plan_jobs([event], subs, {}, lease_until=10.0).jobs
    assert {j.subscription_id: j.ordering_key for j in jobs} == {"plain": "", "ordered": "k"}
