"""What attempts write to their subscription (last delivery, whether it is failing and since
when, disabling), and when that write may wait to be coalesced with later ones."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from service.domain.models import DisabledReason
from service.domain.outcomes import Outcome
from service.domain.pipeline import RecordedAttempt

# A subscription's row is written at most this often while nothing but its last delivery
# changes: with 1,000 subscriptions every batch of results updated most of them.
COALESCE_SECONDS = 1.0


@dataclass(frozen=True)
class Mark:
    """One subscription's update after a batch of attempts: its last attempt's time and
    status; `cleared` (its last attempt succeeded) or failing since `failing_since`, or,
    when None, since whenever it started failing (now if it was not)."""

    subscription_id: str
    tenant: str
    at: datetime
    status: int | None
    cleared: bool
    failing_since: datetime | None
    disable: DisabledReason | None
    mixed: bool  # the batch had a success and a failure


def marks_of(items: Sequence[RecordedAttempt], now: datetime) -> list[Mark]:
    """One mark per subscription of the batch (test attempts count for none): its last
    attempt decides, any disabling decision in the batch holds."""
    by_subscription: dict[str, list[RecordedAttempt]] = {}
    for item in items:
        if not item.attempt.test:
            by_subscription.setdefault(item.attempt.subscription_id, []).append(item)
    marks = []
    for subscription_id, attempts in by_subscription.items():
        last = attempts[-1].attempt
        outcomes = {a.attempt.outcome == Outcome.SUCCEEDED for a in attempts}
        cleared = last.outcome == Outcome.SUCCEEDED
        marks.append(
            Mark(
                subscription_id,
                last.tenant,
                now,
                last.http_status,
                cleared,
                # Failing again since this batch, after a success in it.
                now if not cleared and True in outcomes else None,
                next((a.disable for a in attempts if a.disable is not None), None),
                mixed=len(outcomes) == 2,
            )
        )
    return marks


def write_now(mark: Mark, last: tuple[float, bool] | None, now: float) -> bool:
    """Whether the mark must be written with its batch, given when the subscription was last
    written (monotonic seconds) and whether that write cleared it: any change of state does;
    one that only moves the last delivery on waits until COALESCE_SECONDS after the last."""
    if last is None or mark.disable is not None or mark.mixed:
        return True
    written_at, cleared = last
    return mark.cleared != cleared or now - written_at >= COALESCE_SECONDS
