"""Domain records passed between the store, the rules and the API edge."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum


class DisabledReason(IntEnum):
    """Why a subscription is disabled; the values match webhooks.v1.DisabledReason."""

    NONE = 0
    MANUAL = 1
    ENDPOINT_GONE = 2
    ENDPOINT_FAILING = 3


class PayloadFormat(IntEnum):
    """Matches webhooks.v1.PayloadFormat (UNSPECIFIED = 0 is stored as ENVELOPE)."""

    ENVELOPE = 1
    CLOUDEVENTS = 2
    DATA = 3
    TEMPLATE = 4


class Ordering(IntEnum):
    """Matches webhooks.v1.Ordering (UNSPECIFIED = 0 is stored as NONE)."""

    NONE = 1
    PER_KEY = 2  # one delivery per key at a time; a FAILED one lets the next go
    PER_KEY_HOLD = 3  # ... and a FAILED one holds its key until retried or released


@dataclass(frozen=True)
class Payload:
    """How one subscription's bodies are built (service.domain.payloads builds them)."""

    format: PayloadFormat = PayloadFormat.ENVELOPE
    template: str = ""  # the JSON text, when format is TEMPLATE

    @property
    def content_type(self) -> str:
        if self.format == PayloadFormat.CLOUDEVENTS:
            return "application/cloudevents+json"
        return "application/json"


# Subscriptions with slots and not frozen: List builds fifty of each, and a frozen
# dataclass sets every field through object.__setattr__, several times slower. Nothing
# assigns to them: changes go through replace().
# Not slots on records that cross to the delivery worker: pickle takes a slots dataclass
# apart field by field in Python, ~3x slower.
@dataclass(slots=True)
class SubscriptionSpec:
    """The fields a caller sets on a subscription."""

    name: str
    url: str
    description: str = ""
    event_types: tuple[str, ...] = ()
    enabled: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    rate_limit_per_second: int = 0
    # Headers whose values reads show; every other value is write-only.
    visible_headers: tuple[str, ...] = ()
    payload: Payload = Payload()
    # A CEL expression an event must satisfy (service.domain.filters); "" = every event.
    filter: str = ""
    ordering: Ordering = Ordering.NONE


@dataclass(slots=True)
class Subscription:
    """A stored subscription, as the API shows it (the secret is never here)."""

    id: str
    tenant: str
    spec: SubscriptionSpec
    disabled_reason: DisabledReason
    secret_prefix: str
    created_by: str
    create_time: datetime
    update_time: datetime
    last_delivery_time: datetime | None = None
    last_delivery_status: int = 0
    previous_secret_expire_time: datetime | None = None


@dataclass(frozen=True)
class EventType:
    """An entry of the event type catalog."""

    name: str
    description: str = ""
    required_scope: str = ""
    json_schema: str = ""
    example_json: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True)
class Event:
    """A domain event as ingested: attributes plus the JSON payload, kept as bytes."""

    id: str
    type: str
    tenant: str
    time: datetime
    data: bytes
    source: str = ""
    subject: str = ""
    # The Kafka record's timestamp in ms (0: none): the same when the record is read again,
    # so the ids of its deliveries are too (fan_out.delivery_id).
    record_time_ms: int = 0
    # Its ordering key (service.domain.ordering): the partitionkey or the record key.
    ordering_key: str = ""
