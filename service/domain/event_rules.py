"""Rules every ingested event satisfies, whichever way it arrived (Kafka or PublishEvent)."""

import json
import math
import re

from service.domain import event_patterns
from service.domain.models import Event

MAX_ID = 255
MAX_ATTRIBUTE = 255
MAX_DEPTH = 64
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


class EventRejected(Exception):
    """An event that cannot be accepted; `reason` is a stable UPPER_SNAKE code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# (tenant, id) names one event: a copy may repeat it, never carry another type or other
# data, or a retry of the first event's deliveries would send what its subscribers may not see.
EVENT_ID_REUSED = EventRejected(
    "EVENT_ID_REUSED",
    "the id names a stored event of another type or with other data; give this event its own id",
)


def check_event(event: Event) -> None:
    """Raises EventRejected naming the first problem."""
    check_attributes(event)
    parse_data(event.data)


def check_attributes(event: Event) -> None:
    """check_event without the payload, for a decoder that has parsed it already (then
    check_depth of the parsed value)."""
    if not event.id:
        raise EventRejected("MISSING_ID", "the event has no id")
    if len(event.id) > MAX_ID or not _PRINTABLE.fullmatch(event.id):
        raise EventRejected(
            "INVALID_ID", f"the id must be 1 to {MAX_ID} printable ASCII characters"
        )
    if not event.type:
        raise EventRejected("MISSING_TYPE", "the event has no type")
    if not event_patterns.is_valid_name(event.type):
        raise EventRejected("INVALID_TYPE", "the type is not a valid event type name")
    if not _TENANT.fullmatch(event.tenant):
        raise EventRejected(
            "INVALID_TENANT", "the tenant must be 1 to 128 letters, digits, '_', '.', '-'"
        )
    if len(event.source) > MAX_ATTRIBUTE or len(event.subject) > MAX_ATTRIBUTE:
        raise EventRejected(
            "INVALID_ATTRIBUTE", f"source and subject are at most {MAX_ATTRIBUTE} characters"
        )
    if "\x00" in event.source or "\x00" in event.subject:  # no database text column holds NUL
        raise EventRejected("INVALID_ATTRIBUTE", "source and subject must not contain NUL")
    if not (_encodable(event.source) and _encodable(event.subject)):
        # A lone surrogate ("\ud800" in JSON) can be parsed but not stored: the batch's
        # transaction failed, and its partition with it, on every read.
        raise EventRejected("INVALID_ATTRIBUTE", "source and subject must be valid Unicode")


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def strict_json(text: bytes | str) -> object:
    """json.loads refusing what would reach subscribers as other than UTF-8 JSON: NaN,
    Infinity and numbers too large for a double, which the json module takes, and UTF-16,
    UTF-32 or a byte order mark, which it detects in bytes (RFC 8259 section 8.1 requires
    UTF-8 without one). Raises UnicodeDecodeError for bytes that are not UTF-8."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if text.startswith("\ufeff"):
        raise ValueError("a byte order mark is not allowed (RFC 8259: UTF-8 without one)")
    return json.loads(text, parse_constant=_not_json, parse_float=_finite)


def _not_json(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:20]} is too large for a number")
    return value


def parse_data(data: bytes) -> object:
    """The payload as JSON; refuses invalid UTF-8, invalid JSON and nesting deeper than 64."""
    try:
        value = strict_json(data)
    except UnicodeDecodeError:
        raise EventRejected("INVALID_UTF8", "the data is not valid UTF-8") from None
    except RecursionError:
        raise EventRejected("TOO_DEEP", f"the data nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise EventRejected("MALFORMED_JSON", f"the data is not valid JSON: {exc}") from None
    check_depth(value)
    return value


def check_depth(value: object) -> None:
    """Refuses a parsed payload nesting deeper than MAX_DEPTH."""
    if _depth(value) > MAX_DEPTH:
        raise EventRejected("TOO_DEEP", f"the data nests deeper than {MAX_DEPTH} levels")


def _depth(value: object) -> int:
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest
