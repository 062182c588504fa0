"""A delivery's body, per subscription: the envelope (the default), CloudEvents structured
JSON, the event's data alone, or a JSON template.

A template is a JSON document. A string in it that is exactly one placeholder, such as
"{{data}}", becomes that part's JSON value; placeholders inside longer text are written in
as text. Placeholders: id, type, tenant, timestamp (RFC 3339), data, data.<field>[.<field>...]
(null when absent), sent_at (the attempt's time, Unix seconds) and sent_at_rfc3339.

Bodies are built once per event and subscription format; the attempt's time is not known
then, so it is left as a marker that `stamp` fills in just before signing. The markers hold
a NUL byte, which JSON written by orjson never contains raw (it escapes control characters),
so `stamp` cannot mistake an event's content for one."""

import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from service.domain.envelope import webhook_body
from service.domain.models import Event, Payload, PayloadFormat
from service.errors import FieldViolation

MAX_TEMPLATE_CHARS = 10_000

_SENT_AT = b"\x00sent_at\x00"
_SENT_AT_RFC3339 = b"\x00sent_at_rfc3339\x00"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]*)\s*\}\}")
_NAMES = ("id", "type", "tenant", "timestamp", "data", "sent_at", "sent_at_rfc3339")
# Where a placeholder was in the serialized template: a whole string value (group 1), or
# inside one (group 2).
_MARKER = re.compile(rb'"\\u0000(\d+)\\u0000"|\\u0001(\d+)\\u0001')


@lru_cache(maxsize=1024)
def stored(kind: int, template: str) -> Payload:
    """A payload as the store keeps it (few distinct ones recur on every read)."""
    return Payload(PayloadFormat(kind), template)


def validate(
    payload: Payload, field: str = "subscription.payload_template"
) -> list[FieldViolation]:
    """Problems of a payload setting, each pointing into the template where it is."""
    if payload.format != PayloadFormat.TEMPLATE:
        if payload.template:
            return [FieldViolation(field, "is only for payload_format TEMPLATE", "UNUSED_TEMPLATE")]
        return []
    if not payload.template.strip():
        return [FieldViolation(field, "is required with payload_format TEMPLATE", "FIELD_REQUIRED")]
    if len(payload.template) > MAX_TEMPLATE_CHARS:
        return [
            FieldViolation(
                field, f"must be at most {MAX_TEMPLATE_CHARS} characters", "FIELD_TOO_LONG"
            )
        ]
    try:
        document = orjson.loads(payload.template)
    except orjson.JSONDecodeError as error:
        return [FieldViolation(field, f"is not valid JSON: {error}", "INVALID_TEMPLATE")]
    if not isinstance(document, dict | list):
        return [FieldViolation(field, "must be a JSON object or array", "INVALID_TEMPLATE")]
    problems: list[FieldViolation] = []
    _walk(document, "$", lambda where, text: problems.extend(_check(field, where, text)))
    return problems


def render(payload: Payload, event: Event, *, test: bool = False) -> bytes:
    """The body for the event (`test`: a SendTestEvent's); `stamp` fills in the attempt's
    time."""
    if payload.format == PayloadFormat.DATA:
        return event.data
    if payload.format == PayloadFormat.CLOUDEVENTS:
        return _cloudevent(event, test)
    if payload.format == PayloadFormat.TEMPLATE:
        return _compiled(payload.template).render(event)
    return webhook_body(event.id, event.type, event.time, event.tenant, event.data, test=test)


def stamp(body: bytes, now: float) -> bytes:
    """The body with the attempt's time where a template asked for it."""
    if b"\x00" not in body:
        return body
    body = body.replace(_SENT_AT, b"%d" % int(now))
    if _SENT_AT_RFC3339 in body:  # only then: the datetime costs more than the rest
        moment = datetime.fromtimestamp(now, UTC).replace(tzinfo=None)
        body = body.replace(_SENT_AT_RFC3339, _rfc3339(moment).encode())
    return body


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds") + "Z"


def _cloudevent(event: Event, test: bool) -> bytes:
    head: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.id,
        "source": event.source or "/webhooks",
        "type": event.type,
        "time": _rfc3339(event.time),
        "datacontenttype": "application/json",
        "tenant": event.tenant,
    }
    if event.subject:
        head["subject"] = event.subject
    if test:
        head["test"] = True
    return orjson.dumps(head)[:-1] + b',"data":' + event.data + b"}"


def _walk(node: Any, where: str, visit: Callable[[str, str], None]) -> None:
    if isinstance(node, str):
        visit(where, node)
    elif isinstance(node, dict):
        for key, value in node.items():
            _walk(value, f"{where}.{key}", visit)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _walk(value, f"{where}[{index}]", visit)


def _check(field: str, where: str, text: str) -> list[FieldViolation]:
    if "\x00" in text or "\x01" in text:
        return [
            FieldViolation(
                field, f"at {where}: control characters \\u0000 and \\u0001", "INVALID_TEMPLATE"
            )
        ]
    out = []
    for match in _PLACEHOLDER.finditer(text):
        name = match.group(1)
        known = name in _NAMES or (name.startswith("data.") and all(name.split(".")[1:]))
        if not known:
            out.append(
                FieldViolation(
                    field,
                    f"at {where}: unknown placeholder {match.group(0)}; use one of "
                    + ", ".join(f"{{{{{n}}}}}" for n in _NAMES)
                    + " or {{data.<field>}}",
                    "UNKNOWN_PLACEHOLDER",
                )
            )
    return out


class _Template:
    """A template split at its placeholders: `parts` around `slots` (name, whole value)."""

    def __init__(self, text: str) -> None:
        slots: list[tuple[str, bool]] = []

        def mark(node: Any) -> Any:
            if isinstance(node, str):
                whole = _PLACEHOLDER.fullmatch(node.strip())
                if whole is not None:
                    slots.append((whole.group(1), True))
                    return f"\x00{len(slots) - 1}\x00"

                def inside(match: re.Match[str]) -> str:
                    slots.append((match.group(1), False))
                    return f"\x01{len(slots) - 1}\x01"

                return _PLACEHOLDER.sub(inside, node)
            if isinstance(node, dict):
                return {key: mark(value) for key, value in node.items()}
            if isinstance(node, list):
                return [mark(value) for value in node]
            return node

        serialized = orjson.dumps(mark(orjson.loads(text)))
        self.parts: list[bytes] = []
        self.order: list[tuple[str, bool]] = []
        at = 0
        for match in _MARKER.finditer(serialized):
            self.parts.append(serialized[at : match.start()])
            index = int(match.group(1) or match.group(2))
            self.order.append(slots[index])
            at = match.end()
        self.parts.append(serialized[at:])

    def render(self, event: Event) -> bytes:
        out = [self.parts[0]]
        parsed: list[Any] = []  # the data, parsed once if a data.<field> asks for it
        for (name, whole), after in zip(self.order, self.parts[1:], strict=True):
            value = _value(name, event, parsed)
            out.append(value if whole else _as_text(value))
            out.append(after)
        return b"".join(out)


def _as_text(value: bytes) -> bytes:
    """A JSON value written inside a string: a string's content as it is, the bare send-time
    marker as it is, anything else as its JSON text escaped."""
    if value.startswith(b'"'):
        return value[1:-1]
    if value == _SENT_AT:
        return value
    return orjson.dumps(value.decode())[1:-1]


def _value(name: str, event: Event, parsed: list[Any]) -> bytes:
    """The placeholder's JSON value."""
    if name == "data":
        return event.data
    if name == "sent_at":
        return _SENT_AT
    if name == "sent_at_rfc3339":
        return b'"' + _SENT_AT_RFC3339 + b'"'
    if name == "timestamp":
        return orjson.dumps(_rfc3339(event.time))
    if name in ("id", "type", "tenant"):
        return orjson.dumps(getattr(event, name))
    if not parsed:
        parsed.append(orjson.loads(event.data))
    node = parsed[0]
    for key in name.split(".")[1:]:
        node = node.get(key) if isinstance(node, dict) else None
    return orjson.dumps(node)


@lru_cache(maxsize=1024)
def _compiled(text: str) -> _Template:
    return _Template(text)
