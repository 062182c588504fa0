"""Records of the delivery pipeline: what to send, where, and what happened."""

import math
from dataclasses import dataclass, field
from datetime import datetime

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
    create_time: datetime
    last_attempt_time: datetime | None
    next_attempt_time: datetime | None
    test: bool
    attempts: tuple[AttemptRecord, ...] = field(default=())


@dataclass(frozen=True)
class DeliveryFilter:
    """ListDeliveries filters; None or empty means any."""

    subscription_id: str = ""
    statuses: tuple[DeliveryStatus, ...] = ()
    event_type: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
