"""The one notion of "now": naive UTC datetimes, as the store keeps them."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def unix_time(moment: datetime) -> float:
    """Seconds since the epoch of a naive UTC datetime (as utcnow() and the store give)."""
    return moment.replace(tzinfo=UTC).timestamp()
