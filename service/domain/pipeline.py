"""Records of the delivery pipeline, shared by the engine and the store: what to send, where,
what happened, and what ingest stored."""

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from service.domain.event_rules import EventRejected
from service.domain.models import DisabledReason
from service.domain.outcomes import DeliveryStatus, ErrorKind, Outcome, Trigger


@dataclass(frozen=True)
class Target:
    """A subscription as the dispatcher needs it: where and how to send."""

    subscription_id: str
    tenant: str
    url: str
    headers: dict[str, str]
    secret_keys: tuple[bytes, ...]
    rate_limit_per_second: int
    enabled: bool
    failing_since: datetime | None
    # When the first of its secrets expires (naive UTC): it signs without it from then on.
    secrets_change_at: datetime | None = None


@dataclass(frozen=True)
class Job:
    """One attempt to make: a delivery, its signed body and how many attempts came before."""

    delivery_id: str
    subscription_id: str
    tenant: str
    event_id: str
    event_type: str
    body: bytes
    attempts_made: int
    trigger: Trigger
    test: bool = False
    event_time: datetime | None = None
    # Unix time at which this process's claim on the delivery ends (inf: no claim).
    lease_until: float = math.inf
    content_type: str = "application/json"
    # Set when the subscription keeps order: the store sends one delivery per key at a time.
    ordering_key: str = ""


@dataclass(frozen=True)
class AttemptRecord:
    """One finished attempt, as stored and as published to the audit topic."""

    attempt_id: str
    delivery_id: str
    subscription_id: str
    event_id: str
    tenant: str
    event_type: str
    attempt_number: int
    url: str
    trigger: Trigger
    attempt_time: datetime
    latency_ms: int
    http_status: int
    error_kind: ErrorKind
    error_message: str
    response_body: str
    outcome: Outcome
    next_attempt_time: datetime | None
    test: bool = False


@dataclass(frozen=True)
class DeliveryView:
    """A delivery as ListDeliveries and GetDelivery show it."""

    id: str
    subscription_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempt_count: int
    last_http_status: int
    last_latency_ms: int | None  # None before the first attempt
    create_time: datetime
    last_attempt_time: datetime | None
    next_attempt_time: datetime | None
    test: bool
    attempts: tuple[AttemptRecord, ...] = field(default=())
    ordering_key: str = ""
    holds_key: bool = False


@dataclass(frozen=True)
class DeliveryFilter:
    """ListDeliveries filters; None or empty means any."""

    subscription_id: str = ""
    statuses: tuple[DeliveryStatus, ...] = ()
    event_type: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class OutboxRecord:
    """An audit record waiting in the outbox for the broker's ack."""

    id: int
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class RecordedAttempt:
    """What `record_attempts` writes for one attempt."""

    attempt: AttemptRecord
    disable: DisabledReason | None
    audit_topic: str
    audit_value: bytes
    ordered: bool = False  # its delivery has an ordering key: the next of its key may go

    @property
    def audit_key(self) -> bytes:
        """The audit record's Kafka key, whether it goes out directly or from the outbox: its
        subscription, so one endpoint's attempts stay in order."""
        return self.attempt.subscription_id.encode()


@dataclass(frozen=True)
class Ingested:
    """What an ingest transaction stored: jobs for the deliveries it created that were not
    sent ahead, the ids of the jobs sent ahead whose deliveries it did not store, and the
    positions in the batch of the events refused because their id names another event;
    `filtered` counts the pairs whose subscription's filter refused the event (false,
    failed); `ordered` the deliveries left to the scheduler, which sends them in order."""

    jobs: list[Job]
    not_stored: frozenset[str]
    reused_ids: tuple[int, ...] = ()
    filtered: tuple[int, int] = (0, 0)
    ordered: int = 0  # deliveries stored for the scheduler to send one per key


@dataclass(frozen=True)
class StoredBatch:
    """A batch's events and deliveries are stored: `hand_off` gives its jobs to the dispatcher;
    `refused` are the positions of the events the store would not take, and why."""

    hand_off: Callable[[], Awaitable[None]]
    refused: Sequence[tuple[int, EventRejected]] = ()
