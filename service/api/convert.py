"""Conversions between webhooks.v1 messages and domain records."""

from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Any, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from service.domain.clock import epoch_parts, utcnow
from service.domain.models import (
    EventType,
    Ordering,
    Payload,
    PayloadFormat,
    Subscription,
    SubscriptionSpec,
)
from service.domain.outcomes import DeliveryStatus
from service.domain.pipeline import AttemptRecord, DeliveryFilter, DeliveryView
from service.domain.validation import redact_headers
from service.errors import invalid
from webhooks.v1 import webhook_service_pb2 as pb


def timestamp(value: datetime | None) -> dict[str, int] | None:
    """A naive-UTC datetime as a Timestamp field's constructor value; None stays unset.
    The dict form costs half of building a Timestamp that the constructor then copies."""
    if value is None:
        return None
    seconds, nanos = epoch_parts(value)
    return {"seconds": seconds, "nanos": nanos}


def duration(value: duration_pb2.Duration, field: str) -> timedelta:
    """A Duration as a timedelta; InvalidArgument naming `field` when it cannot be one."""
    try:
        return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)
    except OverflowError:
        raise invalid(field, "is out of range", "DURATION_OUT_OF_RANGE") from None


def moment(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A Timestamp as a naive-UTC datetime; InvalidArgument naming `field` when invalid."""
    try:
        return value.ToDatetime()
    except (ValueError, OverflowError):
        raise invalid(
            field, "is not a valid timestamp (years 1 to 9999)", "INVALID_TIMESTAMP"
        ) from None


def strings_with_nul(message: Message, prefix: str = "") -> list[str]:
    """Paths of the string fields (nested, repeated and map ones too) that hold a NUL
    character, which no database column can store."""
    found = []
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if "\x00" in str(key) or (isinstance(item, str) and "\x00" in item):
                    found.append(f"{path}[{key!r}]")
                elif isinstance(item, Message):
                    found.extend(strings_with_nul(item, f"{path}[{key!r}]."))
        elif field.type == field.TYPE_MESSAGE:
            items = value if field.is_repeated else [value]
            for index, item in enumerate(items):
                where = f"{path}[{index}]." if field.is_repeated else f"{path}."
                found.extend(strings_with_nul(item, where))
        elif field.type == field.TYPE_STRING:
            items = value if field.is_repeated else [value]
            if any("\x00" in item for item in items):
                found.append(path)
    return found


def spec_from_pb(message: pb.Subscription) -> SubscriptionSpec:
    return SubscriptionSpec(
        name=message.name,
        url=message.url,
        description=message.description,
        event_types=tuple(message.event_types),
        enabled=message.enabled if message.HasField("enabled") else True,
        headers=dict(message.headers),
        rate_limit_per_second=message.rate_limit_per_second,
        visible_headers=tuple(message.visible_headers),
        payload=Payload(
            _choice(
                PayloadFormat, message.payload_format, PayloadFormat.ENVELOPE, "payload_format"
            ),
            message.payload_template,
        ),
        filter=message.filter,
        ordering=_choice(Ordering, message.ordering, Ordering.NONE, "ordering"),
    )


E = TypeVar("E", bound=IntEnum)


def _choice(kind: type[E], value: int, unset: E, field: str) -> E:
    """UNSPECIFIED (0) is `unset`; a number no client stub would send is refused."""
    try:
        return kind(value or unset)
    except ValueError:
        raise invalid(
            f"subscription.{field}", f"{value} is not a valid {kind.__name__}", "UNKNOWN_ENUM_VALUE"
        ) from None


def populated_subscription_fields(message: pb.Subscription) -> list[str]:
    """Fields an update without a mask changes: those set to a non-default value."""
    fields = [f.name for f, _ in message.ListFields() if f.name != "id"]
    return fields


def subscription_to_pb(sub: Subscription) -> pb.Subscription:
    return pb.Subscription(**subscription_fields(sub))


def subscription_fields(sub: Subscription) -> dict[str, Any]:
    """A Subscription message's fields, for its constructor (List passes a page of them to
    the response's, which spares a copy of each). Every field in one call, timestamps
    included, and unset fields left out: the cheapest way protobuf offers."""
    spec = sub.spec
    fields: dict[str, Any] = {
        "id": sub.id,
        "name": spec.name,
        "description": spec.description,
        "url": spec.url,
        "event_types": spec.event_types,
        "enabled": spec.enabled,
        "disabled_reason": int(sub.disabled_reason),
        "rate_limit_per_second": spec.rate_limit_per_second,
        "secret_prefix": sub.secret_prefix,
        "created_by": sub.created_by,
        "last_delivery_status": sub.last_delivery_status,
        "create_time": timestamp(sub.create_time),
        "update_time": timestamp(sub.update_time),
    }
    if spec.headers:
        fields["headers"] = redact_headers(spec.headers, spec.visible_headers)
    if spec.visible_headers:
        fields["visible_headers"] = spec.visible_headers
    if spec.payload.format != PayloadFormat.ENVELOPE:
        fields["payload_format"] = int(spec.payload.format)
        fields["payload_template"] = spec.payload.template
    if spec.filter:
        fields["filter"] = spec.filter
    if spec.ordering != Ordering.NONE:
        fields["ordering"] = int(spec.ordering)
    if sub.last_delivery_time is not None:
        fields["last_delivery_time"] = timestamp(sub.last_delivery_time)
    if sub.previous_secret_expire_time is not None:
        fields["previous_secret_expire_time"] = timestamp(sub.previous_secret_expire_time)
    return fields


def event_type_from_pb(message: pb.EventType) -> EventType:
    return EventType(
        name=message.name,
        description=message.description,
        required_scope=message.required_scope,
        json_schema=message.json_schema,
        example_json=message.example_json,
    )


def event_type_to_pb(event_type: EventType) -> pb.EventType:
    out = pb.EventType(
        name=event_type.name,
        description=event_type.description,
        required_scope=event_type.required_scope,
        json_schema=event_type.json_schema,
        example_json=event_type.example_json,
    )
    _set_times(out, create_time=event_type.create_time, update_time=event_type.update_time)
    return out


def _set_times(message: Message, **values: datetime | None) -> None:
    for name, value in values.items():
        if value is not None:
            stamp = getattr(message, name)
            stamp.seconds, stamp.nanos = epoch_parts(value)


def attempt_to_pb(record: AttemptRecord) -> pb.Attempt:
    out = pb.Attempt(
        id=record.attempt_id,
        attempt_number=record.attempt_number,
        trigger=int(record.trigger),  # type: ignore[arg-type]
        url=record.url,
        http_status=record.http_status,
        response_body=record.response_body,
        error_kind=int(record.error_kind),  # type: ignore[arg-type]
        error_message=record.error_message,
        outcome=int(record.outcome),  # type: ignore[arg-type]
    )
    out.latency.FromMilliseconds(record.latency_ms)
    _set_times(out, attempt_time=record.attempt_time, next_attempt_time=record.next_attempt_time)
    return out


def delivery_to_pb(view: DeliveryView) -> pb.Delivery:
    out = pb.Delivery(
        id=view.id,
        subscription_id=view.subscription_id,
        event_id=view.event_id,
        event_type=view.event_type,
        status=int(view.status),  # type: ignore[arg-type]
        attempt_count=view.attempt_count,
        last_http_status=view.last_http_status,
        test=view.test,
        attempts=[attempt_to_pb(a) for a in view.attempts],
        ordering_key=view.ordering_key,
        holds_key=view.holds_key,
    )
    if view.last_latency_ms is not None:
        out.last_attempt_latency.FromMilliseconds(view.last_latency_ms)
    _set_times(
        out,
        create_time=view.create_time,
        last_attempt_time=view.last_attempt_time,
        next_attempt_time=view.next_attempt_time,
    )
    return out


def delivery_filter_from_pb(request: pb.ListDeliveriesRequest) -> DeliveryFilter:
    unknown = [s for s in request.statuses if s not in _KNOWN_STATUSES]
    if unknown:
        raise invalid("statuses", f"unknown or unspecified statuses: {unknown}", "UNKNOWN_STATUS")
    start = moment(request.start_time, "start_time") if request.HasField("start_time") else None
    end = moment(request.end_time, "end_time") if request.HasField("end_time") else None
    if start is not None and end is not None and start >= end:
        raise invalid("end_time", "must be after start_time", "EMPTY_TIME_RANGE")
    return DeliveryFilter(
        subscription_id=request.subscription_id,
        statuses=tuple(DeliveryStatus(s) for s in request.statuses),
        event_type=request.event_type,
        start_time=start,
        end_time=end,
    )


_KNOWN_STATUSES = {int(s) for s in DeliveryStatus}
_RECOVERABLE = (DeliveryStatus.FAILED, DeliveryStatus.SUCCEEDED)


def time_window(request: Any) -> tuple[datetime, datetime]:
    """[since, until) of a RecoverDeliveries or ReplayEvents request: since is required,
    until defaults to now."""
    if not request.HasField("since"):
        raise invalid("since", "is required", "FIELD_REQUIRED")
    since = moment(request.since, "since")
    until = moment(request.until, "until") if request.HasField("until") else utcnow()
    if since >= until:
        raise invalid("until", "must be after since", "EMPTY_TIME_RANGE")
    return since, until


def recover_statuses(values: Sequence[int]) -> tuple[DeliveryStatus, ...]:
    """The statuses RecoverDeliveries re-queues: FAILED unless it names them."""
    unknown = [v for v in values if v not in _KNOWN_STATUSES]
    if unknown:
        raise invalid("statuses", f"unknown or unspecified statuses: {unknown}", "UNKNOWN_STATUS")
    statuses = tuple(dict.fromkeys(DeliveryStatus(v) for v in values)) or (DeliveryStatus.FAILED,)
    if any(s not in _RECOVERABLE for s in statuses):
        raise invalid(
            "statuses",
            "only FAILED and SUCCEEDED deliveries are recovered",
            "STATUS_NOT_RECOVERABLE",
        )
    return statuses
