"""What an attempt's result means: success, a retry when, or failure, and whether to disable."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from service.domain.models import DisabledReason
from service.domain.retry import next_delay

# The longest wait a Retry-After header can impose.
MAX_RETRY_AFTER = 86_400.0


class ErrorKind(IntEnum):
    """Matches webhooks.v1.ErrorKind."""

    NONE = 0
    HTTP_STATUS = 1
    TIMEOUT = 2
    CONNECTION = 3
    DNS = 4
    TLS = 5
    SSRF_BLOCKED = 6
    REDIRECT = 7
    CIRCUIT_OPEN = 8
    INTERNAL = 9


class Outcome(IntEnum):
    """Matches webhooks.v1.AttemptOutcome."""

    SUCCEEDED = 1
    RETRY_SCHEDULED = 2
    FAILED = 3


class Trigger(IntEnum):
    """Matches webhooks.v1.AttemptTrigger."""

    SCHEDULED = 1
    MANUAL = 2
    TEST = 3
    REPLAY = 4


class DeliveryStatus(IntEnum):
    """Matches webhooks.v1.DeliveryStatus."""

    PENDING = 1
    SUCCEEDED = 2
    FAILED = 3


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt produced."""

    http_status: int = 0
    error_kind: ErrorKind = ErrorKind.NONE
    error_message: str = ""
    latency_ms: int = 0
    response_body: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind == ErrorKind.NONE and 200 <= self.http_status < 300


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    delay: float | None = None
    disable: DisabledReason | None = None


def decide(
    result: AttemptResult,
    *,
    attempts_made: int,
    schedule: Sequence[float],
    jitter: float,
    random: float,
    now: datetime,
    failing_since: datetime | None,
    disable_after: timedelta,
    test: bool = False,
) -> Decision:
    """The rules of DESIGN.md "Delivery": 2xx succeeds, 410 disables, 429/503 honour
    Retry-After, the rest retries on the schedule until it is exhausted; an endpoint
    failing without a success for `disable_after` is disabled. Test deliveries are
    attempted once and never disable anything."""
    if result.ok:
        return Decision(Outcome.SUCCEEDED)
    if test:
        return Decision(Outcome.FAILED)
    if result.http_status == 410:
        return Decision(Outcome.FAILED, disable=DisabledReason.ENDPOINT_GONE)
    if now - (failing_since or now) >= disable_after:
        return Decision(Outcome.FAILED, disable=DisabledReason.ENDPOINT_FAILING)
    delay = next_delay(attempts_made, schedule, jitter, random)
    if delay is None:
        return Decision(Outcome.FAILED)
    if result.retry_after is not None and result.http_status in (429, 503):
        # Never sooner than the schedule says, never later than a day.
        delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER))
    return Decision(Outcome.RETRY_SCHEDULED, delay=delay)
