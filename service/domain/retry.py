"""Retry timing: the schedule with jitter, and the Retry-After header."""

from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Like Svix: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after the first attempt.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)


def next_delay(
    attempts_made: int, schedule: Sequence[float], jitter: float, random: float
) -> float | None:
    """Seconds until the next attempt after `attempts_made` attempts, or None when exhausted.

    `random` in [0, 1) spreads retries by up to +/- `jitter` (a fraction) so that an
    endpoint that comes back is not hit by every retry at the same instant.
    """
    if attempts_made < 1 or attempts_made > len(schedule):
        return None
    base = schedule[attempts_made - 1]
    return max(0.0, base * (1 + jitter * (2 * random - 1)))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` asks for (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return max(0.0, (when - now).total_seconds())
