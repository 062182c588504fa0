"""Event type names and subscription patterns: exact names, `*`, and `prefix.*`."""

import functools
import re
from collections.abc import Iterable

WILDCARD = "*"
MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def is_valid_name(name: str) -> bool:
    """True for a catalog name such as `lead.created` or `lead-created`."""
    return len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


def is_pattern(item: str) -> bool:
    """True for `*` and `prefix.*`; false for an exact name."""
    return item == WILDCARD or item.endswith(".*")


def is_valid_pattern(item: str) -> bool:
    """True for `*` or `prefix.*` whose prefix is a valid name."""
    return item == WILDCARD or (item.endswith(".*") and is_valid_name(item[:-2]))


def pattern_matches(item: str, event_type: str) -> bool:
    """Whether one subscription entry (exact name or pattern) covers an event type."""
    if item == WILDCARD:
        return True
    if item.endswith(".*"):
        return event_type.startswith(item[:-1])
    return item == event_type


def subscription_matches(event_types: Iterable[str], event_type: str) -> bool:
    """Whether a subscription's list covers an event type; an empty list covers all."""
    items = tuple(event_types)
    return _covers(items, event_type)


@functools.lru_cache(maxsize=65_536)
def _covers(items: tuple[str, ...], event_type: str) -> bool:
    """subscription_matches, remembered: fan-out asks it for every event and subscription,
    and few distinct lists and types recur."""
    return not items or any(pattern_matches(item, event_type) for item in items)
