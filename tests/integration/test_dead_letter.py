"""Every kind of bad Kafka record reaches the dead-letter topic with its reason and origin, and
the good records around it are still delivered (the partition is never blocked)."""

import json
from typing import Any

import pytest

from kafka import topics
from kafka.codec import decode_event, header
from service.domain.event_rules import EventRejected
from tests.pipeline_support import Pipeline, Receiver, Record, cloud_event, read_topic, structured
from webhooks.v1 import events_pb2

CE = [("content-type", b"application/cloudevents+json")]


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def _bad_records() -> dict[str, Record]:
    ok = cloud_event("person.created", {})
    return {
        "MALFORMED_JSON": (b"k", b"{not json", CE),
        "INVALID_UTF8": (b"k", b'{"specversion": "1.0", "id": "\xff\xfe"}', CE),
        "MISSING_ID": (b"k", json.dumps({**ok, "id": ""}).encode(), CE),
        "MISSING_TYPE": (b"k", json.dumps({**ok, "type": None}).encode(), CE),
        "INVALID_TYPE": (b"k", json.dumps({**ok, "type": "has space"}).encode(), CE),
        "UNSUPPORTED_SPEC_VERSION": (b"k", json.dumps({**ok, "specversion": "0.3"}).encode(), CE),
        "INVALID_TIME": (b"k", json.dumps({**ok, "time": "yesterday"}).encode(), CE),
        "UNKNOWN_EVENT_TYPE": (b"k", json.dumps({**ok, "type": "not.in.catalog"}).encode(), CE),
        "SCHEMA_VIOLATION": (
            b"k",
            json.dumps(cloud_event("lead.created", {"lead_id": 7})).encode(),
            CE,
        ),
        "TOO_DEEP": (b"k", json.dumps({**ok, "data": _nested(100)}).encode(), CE),
        "TOO_LARGE": (b"k", json.dumps({**ok, "data": {"pad": "x" * 5000}}).encode(), CE),
        "UNSUPPORTED_CONTENT_TYPE": (b"k", b"hello", [("content-type", b"text/plain")]),
        "MALFORMED_PROTOBUF": (
            b"k",
            b"\xff\xff\xff",
            [("content-type", b"application/x-protobuf")],
        ),
        "EMPTY": (b"k", b"", CE),
        "INVALID_TENANT": (b"k", json.dumps({**ok, "tenant": "bad tenant!"}).encode(), CE),
        # Parses, but no database can store it: it once failed its batch on every read.
        "INVALID_ATTRIBUTE": (b"k", json.dumps({**ok, "source": "\ud800"}).encode(), CE),
    }


def test_bad_records_are_dead_lettered_and_good_ones_still_flow(
    make_pipeline: Any, receiver: Receiver
) -> None:
    pipeline: Pipeline = make_pipeline(WEBHOOKS_MAX_EVENT_BYTES="4096")
    pipeline.api.create(url=receiver.url("/good"))
    bad = _bad_records()
    first, last = (
        cloud_event("person.created", {"n": "first"}),
        cloud_event("person.created", {"n": "last"}),
    )
    # All on one partition (same key), the bad ones between two good ones.
    records = [structured(first), *bad.values(), structured(last)]
    pipeline.send(*[(b"k", value, headers) for _, value, headers in records])
    delivered = receiver.wait_for("/good", 2)
    assert sorted(r.json["data"]["n"] for r in delivered) == ["first", "last"]

    def mine(found: list[Any]) -> list[Any]:
        return [r for r in found if header(r.headers, "dlq-topic") == pipeline.topic]

    dead = mine(
        read_topic(pipeline.bootstrap, topics.DEAD_LETTER_TOPIC, lambda r: len(mine(r)) >= len(bad))
    )
    reasons = {header(r.headers, "dlq-reason"): r for r in dead}
    assert set(reasons) == set(bad)
    for reason, record in reasons.items():
        assert record.value == bad[str(reason)][1]  # the original bytes, untouched
        assert record.key == b"k"
        assert header(record.headers, "dlq-partition") is not None
        assert int(header(record.headers, "dlq-offset") or -1) >= 0
        assert header(record.headers, "dlq-error")
    # The original headers travel along.
    assert header(reasons["UNSUPPORTED_CONTENT_TYPE"].headers, "content-type") == "text/plain"


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"null", CE, "MALFORMED_CLOUDEVENT"),
        (
            json.dumps(
                {"specversion": "1.0", "id": "1", "type": "a.b", "data_base64": "%%"}
            ).encode(),
            CE,
            "MALFORMED_CLOUDEVENT",
        ),
        (
            b"{}",
            [
                ("ce_specversion", b"1.0"),
                ("ce_type", b"a.b"),
                ("content-type", b"application/json"),
            ],
            "MISSING_ID",
        ),
        (
            b"<xml/>",
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"1"),
                ("ce_type", b"a.b"),
                ("content-type", b"application/xml"),
            ],
            "UNSUPPORTED_CONTENT_TYPE",
        ),
        (
            events_pb2.DomainEvent(id="1", type="a.b", data=b"{oops").SerializeToString(),
            [("content-type", b"application/x-protobuf")],
            "MALFORMED_JSON",
        ),
        (
            json.dumps({"specversion": "1.0", "id": "x" * 300, "type": "a.b"}).encode(),
            CE,
            "INVALID_ID",
        ),
        # JSON has no NaN or Infinity (Python's json module takes them).
        (
            b'{"specversion": "1.0", "id": "1", "type": "a.b", "data": {"v": NaN}}',
            CE,
            "MALFORMED_JSON",
        ),
        (
            b'{"specversion": "1.0", "id": "1", "type": "a.b", "data": [1e400]}',
            CE,
            "MALFORMED_JSON",
        ),
        (
            b'{"specversion": "1.0", "id": "1", "type": "a.b", "data": {"s": "\\udc00"}}',
            CE,
            "INVALID_UTF8",
        ),
        (
            b'{"specversion": "1.0", "id": "1", "type": "a.b", "subject": "a\\ud800"}',
            CE,
            "INVALID_ATTRIBUTE",
        ),
        (
            b'{"v": -Infinity}',
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"a.b")],
            "MALFORMED_JSON",
        ),
        # RFC 8259: UTF-8 without a byte order mark; the json module takes the others.
        *[
            (value, headers, reason)
            for headers in (
                CE,
                [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_type", b"a.b")],
            )
            for value, reason in (
                (
                    '{"specversion": "1.0", "id": "1", "type": "a.b"}'.encode("utf-16"),
                    "INVALID_UTF8",
                ),
                (
                    '{"specversion": "1.0", "id": "1", "type": "a.b"}'.encode("utf-32"),
                    "INVALID_UTF8",
                ),
                (b'\xef\xbb\xbf{"specversion": "1.0", "id": "1", "type": "a.b"}', "MALFORMED_JSON"),
            )
        ],
        (
            events_pb2.DomainEvent(
                id="1", type="a.b", data='{"a": 1}'.encode("utf-16-le")
            ).SerializeToString(),
            [("content-type", b"application/x-protobuf")],
            "MALFORMED_JSON",
        ),
    ],
)
def test_decoder_reasons(value: bytes, headers: list[tuple[str, bytes]], reason: str) -> None:
    with pytest.raises(EventRejected) as caught:
        decode_event(value, headers, default_tenant="t", max_bytes=10_000)
    assert caught.value.reason == reason


def test_decoder_reads_every_format_alike() -> None:
    base = {
        "specversion": "1.0",
        "id": "e1",
        "type": "a.b",
        "source": "s",
        "tenant": "acme",
        "time": "2026-11-23T12:00:00+02:00",
        "data": {"k": [1, 2]},
    }
    structured_event = decode_event(
        json.dumps(base).encode(), CE, default_tenant="d", max_bytes=10_000
    )
    binary_headers = [(f"ce_{k}", str(v).encode()) for k, v in base.items() if k != "data"]
    binary_event = decode_event(
        json.dumps(base["data"]).encode(), binary_headers, default_tenant="d", max_bytes=10_000
    )
    proto = events_pb2.DomainEvent(
        id="e1", type="a.b", source="s", tenant="acme", data=b'{"k":[1,2]}'
    )
    proto.time.FromJsonString("2026-11-23T10:00:00Z")
    proto_event = decode_event(
        proto.SerializeToString(),
        [("content-type", b"application/x-protobuf")],
        default_tenant="d",
        max_bytes=10_000,
    )
    for event in (structured_event, binary_event, proto_event):
        assert (event.id, event.type, event.tenant, event.source) == ("e1", "a.b", "acme", "s")
        assert event.time.isoformat() == "2026-11-23T10:00:00"
        assert json.loads(event.data) == {"k": [1, 2]}
    # Beyond 64 bits, past the fast parser: kept exact, as JSON allows.
    big = decode_event(
        json.dumps({**base, "data": {"n": 2**70, "f": 0.1}}).encode(),
        CE,
        default_tenant="d",
        max_bytes=10_000,
    )
    assert big.data == b'{"n":1180591620717411303424,"f":0.1}'
    untenanted = decode_event(
        json.dumps({**base, "tenant": None}).encode(), CE, default_tenant="d", max_bytes=10_000
    )
    assert untenanted.tenant == "d"
