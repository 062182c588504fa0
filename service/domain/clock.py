"""The one notion of "now": naive UTC datetimes, as the store keeps them."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
