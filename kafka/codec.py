"""Codecs: Kafka records to events (CloudEvents structured, binary, protobuf) and attempts back."""

import base64
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import orjson
from google.protobuf.message import DecodeError as ProtobufDecodeError

from service.domain.clock import epoch_parts, utcnow
from service.domain.event_rules import (
    EventRejected,
    check_attributes,
    check_depth,
    check_event,
    strict_json,
)
from service.domain.models import Event
from service.domain.ordering import ordering_key
from service.domain.pipeline import AttemptRecord
from webhooks.v1 import events_pb2

Headers = Sequence[tuple[str, bytes]]

CLOUDEVENTS_JSON = "application/cloudevents+json"
PROTOBUF = "application/x-protobuf"
_PROTOBUF_TYPES = (PROTOBUF, "application/protobuf", "application/vnd.google.protobuf")
_JSON_TYPES = ("application/json", "text/json", "")
_HUGE = float(2**63)
_NOT_PARSED = object()  # a structured event's data_base64: its bytes are parsed when checked


def header(headers: Headers, name: str) -> str | None:
    """A header's value as text (the last one wins), or None."""
    found = None
    for key, value in headers:
        if key.lower() == name:
            found = value.decode("utf-8", "replace") if value is not None else ""
    return found


def decode_event(
    value: bytes | None, headers: Headers, *, default_tenant: str, max_bytes: int
) -> Event:
    """A checked Event, or EventRejected with the reason the dead-letter record will carry."""
    if not value:
        raise EventRejected("EMPTY", "the record has no value")
    if len(value) > max_bytes:
        raise EventRejected(
            "TOO_LARGE", f"the record is {len(value)} bytes; the limit is {max_bytes}"
        )
    content_type = (header(headers, "content-type") or "").split(";")[0].strip().lower()
    if header(headers, "ce_specversion") is not None:
        event = _binary(value, headers, content_type, default_tenant)
    elif content_type == CLOUDEVENTS_JSON or (not content_type and value.lstrip()[:1] == b"{"):
        event, parsed = _structured(value, default_tenant)
        if parsed is not _NOT_PARSED:  # its data came out of the document's own parse
            check_attributes(event)
            check_depth(parsed)
            return event
    elif content_type in _PROTOBUF_TYPES:
        event = _protobuf(value, default_tenant)
    else:
        raise EventRejected(
            "UNSUPPORTED_CONTENT_TYPE", f"content-type {content_type!r} is not supported"
        )
    check_event(event)
    return event


def _parse(value: bytes) -> tuple[object, Callable[[object], bytes]]:
    """The parsed document and how to serialise a part of it again. orjson first; the json
    module when orjson refuses it (NaN, nesting past 1024: the json module names the error
    for the dead-letter record) or when it holds a float of 2**63 or more, which may have
    been an integer beyond 64 bits that orjson turned into a float (JSON keeps it exact)."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    else:
        if not _has_huge_float(document):
            return document, orjson.dumps
    try:
        return strict_json(value), _json_bytes
    except UnicodeDecodeError:
        raise EventRejected("INVALID_UTF8", "the record is not valid UTF-8") from None
    except RecursionError:
        raise EventRejected("TOO_DEEP", "the record nests too deeply") from None
    except ValueError as exc:
        raise EventRejected("MALFORMED_JSON", f"the record is not valid JSON: {exc}") from None


def _has_huge_float(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and abs(item) >= _HUGE:
            return True
    return False


def _json_bytes(value: object) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise EventRejected("INVALID_UTF8", "the data holds a lone surrogate escape") from None


def _structured(value: bytes, default_tenant: str) -> tuple[Event, object]:
    """The event and its data as parsed with the document (_NOT_PARSED for data_base64)."""
    document, dumps = _parse(value)
    if not isinstance(document, dict):
        raise EventRejected("MALFORMED_CLOUDEVENT", "a structured CloudEvent is a JSON object")
    _check_spec_version(document.get("specversion"))
    parsed: object = _NOT_PARSED
    if "data_base64" in document:
        try:
            data = base64.b64decode(str(document["data_base64"]), validate=True)
        except ValueError:
            raise EventRejected("MALFORMED_CLOUDEVENT", "data_base64 is not valid base64") from None
    else:
        parsed = document.get("data")
        data = dumps(parsed)
    event = Event(
        id=_text(document.get("id")),
        type=_text(document.get("type")),
        source=_text(document.get("source")),
        subject=_text(document.get("subject")),
        tenant=_text(document.get("tenant")) or default_tenant,
        time=_time(document.get("time")),
        data=data,
        ordering_key=ordering_key(_text(document.get("partitionkey"))),
    )
    return event, parsed


def _binary(value: bytes, headers: Headers, content_type: str, default_tenant: str) -> Event:
    _check_spec_version(header(headers, "ce_specversion"))
    if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
        raise EventRejected(
            "UNSUPPORTED_CONTENT_TYPE", f"binary-mode data must be JSON, not {content_type!r}"
        )
    return Event(
        id=header(headers, "ce_id") or "",
        type=header(headers, "ce_type") or "",
        source=header(headers, "ce_source") or "",
        subject=header(headers, "ce_subject") or "",
        tenant=header(headers, "ce_tenant") or default_tenant,
        time=_time(header(headers, "ce_time")),
        data=value,
        ordering_key=ordering_key(header(headers, "ce_partitionkey")),
    )


def _protobuf(value: bytes, default_tenant: str) -> Event:
    message = events_pb2.DomainEvent()
    try:
        message.ParseFromString(value)
    except ProtobufDecodeError:
        raise EventRejected(
            "MALFORMED_PROTOBUF", "the record is not a webhooks.v1.DomainEvent"
        ) from None
    return event_from_proto(message, default_tenant)


def event_from_proto(message: events_pb2.DomainEvent, default_tenant: str) -> Event:
    """The Event a DomainEvent describes (also used by PublishEvent); EventRejected if
    its time is out of range."""
    try:
        when = message.time.ToDatetime() if message.HasField("time") else utcnow()
    except (ValueError, OverflowError):
        raise EventRejected("INVALID_TIME", "time is not a valid timestamp") from None
    return Event(
        id=message.id,
        type=message.type,
        source=message.source,
        subject=message.subject,
        tenant=message.tenant or default_tenant,
        time=when,
        data=message.data or b"null",
    )


def _check_spec_version(value: object) -> None:
    if value != "1.0":
        raise EventRejected("UNSUPPORTED_SPEC_VERSION", f"specversion must be '1.0', not {value!r}")


def _text(value: object) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _time(value: object) -> datetime:
    """RFC 3339 time as naive UTC; the ingest time when absent."""
    if value in (None, ""):
        return utcnow()
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            return parsed
        return parsed.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):  # not RFC 3339, or out of range once in UTC
        raise EventRejected("INVALID_TIME", f"time {str(value)[:40]!r} is not RFC 3339") from None


def dead_letter_headers(
    headers: Headers, reason: str, message: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """The original headers plus where the record came from and why it was refused."""
    return [
        *[(k, v) for k, v in headers if not k.startswith("dlq-")],
        ("dlq-reason", reason.encode()),
        ("dlq-error", message[:1000].encode()),
        ("dlq-topic", topic.encode()),
        ("dlq-partition", str(partition).encode()),
        ("dlq-offset", str(offset).encode()),
    ]


def encode_attempt(record: AttemptRecord) -> bytes:
    """The webhooks.v1.DeliveryAttempt audit record of one attempt."""
    message = events_pb2.DeliveryAttempt(
        attempt_id=record.attempt_id,
        delivery_id=record.delivery_id,
        subscription_id=record.subscription_id,
        event_id=record.event_id,
        tenant=record.tenant,
        event_type=record.event_type,
        attempt_number=record.attempt_number,
        url=record.url,
        http_status=record.http_status,
        error_kind=int(record.error_kind),  # type: ignore[arg-type]
        error_message=record.error_message,
        outcome=int(record.outcome),  # type: ignore[arg-type]
        trigger=int(record.trigger),  # type: ignore[arg-type]
    )
    message.latency.FromMilliseconds(record.latency_ms)
    message.attempt_time.seconds, message.attempt_time.nanos = epoch_parts(record.attempt_time)
    if record.next_attempt_time is not None:
        stamp = message.next_attempt_time
        stamp.seconds, stamp.nanos = epoch_parts(record.next_attempt_time)
    return message.SerializeToString()
