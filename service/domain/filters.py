"""Payload filters: a subscription's CEL expression over the event, deciding whether the
event reaches it.

The expression sees two variables: `event`, the event as a webhooks.v1.DomainEvent message
(`event.type`, `event.source`, `event.subject`, `event.tenant`, `event.id`, `event.time` a
timestamp), and `data`, the event's JSON payload (`data.amount > 100`). It must yield a
bool. An expression is type-checked when it is set, so a misspelt attribute or a syntax
error is refused with its line and column; a field absent from `data` is an error when the
event is evaluated, which refuses the event (`has(data.field)` tests for one).

Cost: the runtime (Google's cel-cpp) stops a comprehension after a fixed iteration budget,
and a comprehension's body may not read `data` or `event` (only its own variable), so no
filter costs more than its length times the event's size."""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import cel_expr_python.cel as cel
import orjson
from google.protobuf import descriptor_pool

from service.domain.event_message import event_message
from service.domain.models import Event
from service.errors import FieldViolation
from webhooks.v1 import events_pb2

MAX_FILTER_CHARS = 4096

_ENV = cel.NewEnv(
    descriptor_pool=descriptor_pool.Default(),
    variables={
        "event": cel.Type(events_pb2.DomainEvent.DESCRIPTOR.full_name),
        "data": cel.Type.DYN,
    },
)
# CEL's standard macros that loop over a list or map.
_COMPREHENSION = re.compile(r"\.\s*(all|exists_one|exists|map|filter)\s*\(")
_STRING = re.compile(
    r"""[rRbB]{0,2}('''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")""",
    re.DOTALL,
)
_TOP_LEVEL = re.compile(r"(?<![.\w])(data|event)\b")
_CEL_ERROR = re.compile(r"^(?:[A-Z_]+: )?(?:ERROR: )?(.*?)(?: \[[A-Z_]+\])?$", re.DOTALL)


class Verdict(Enum):
    """What a filter made of one event."""

    PASSED = "passed"
    REFUSED = "refused"  # the expression was false
    FAILED = "failed"  # evaluating it failed (a missing field, a wrong type): refused too


@dataclass(frozen=True, eq=False)
class Filter:
    """A checked expression, ready to evaluate."""

    text: str
    program: cel.Expression


class FilterInvalid(ValueError):
    """An expression that cannot be a filter; the message names line and column."""


def violations(text: str, field: str = "subscription.filter") -> list[FieldViolation]:
    """Problems of a filter setting (empty text: no filter, always valid)."""
    if not text:
        return []
    try:
        compiled(text)
    except FilterInvalid as error:
        return [FieldViolation(field, str(error), "INVALID_FILTER")]
    return []


@lru_cache(maxsize=4096)
def compiled(text: str) -> Filter:
    """The filter for the text (cached: the same few expressions recur on every read).
    Raises FilterInvalid."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterInvalid(f"must be at most {MAX_FILTER_CHARS} characters")
    try:
        program = _ENV.compile(text)
    except RuntimeError as error:
        raise FilterInvalid(_cel_message(str(error))) from None
    result = program.return_type()
    if result not in (cel.Type.BOOL, cel.Type.DYN):
        raise FilterInvalid(f"must be a bool expression, not {result.name().lower()}")
    for offset in _reads_outside_body(text):
        line, column = _position(text, offset)
        raise FilterInvalid(
            f"{line}:{column}: a comprehension's body may use only its own variable, not"
            " `data` or `event` (this keeps a filter's cost linear in the event's size)"
        )
    return Filter(text, program)


def stored(text: str) -> Filter | None:
    """The filter of a stored subscription; None for none. One stored before a change of
    these rules and invalid under them refuses every event rather than pass them all."""
    if not text:
        return None
    try:
        return compiled(text)
    except FilterInvalid:
        return compiled("false")


class EventView:
    """One event as filters see it, built on the first evaluation and shared by all."""

    __slots__ = ("_activation", "_event")

    def __init__(self, event: Event) -> None:
        self._event = event
        self._activation: cel.Activation | None = None

    def passes(self, rule: Filter) -> bool:
        return self.verdict(rule) is Verdict.PASSED

    def verdict(self, rule: Filter) -> Verdict:
        try:
            if self._activation is None:
                self._activation = _activation(self._event)
            value = rule.program.eval(self._activation)
            result = value.value()
        except (RuntimeError, ValueError, TypeError):
            return Verdict.FAILED
        if result is True:
            return Verdict.PASSED
        return Verdict.REFUSED if result is False else Verdict.FAILED


def _activation(event: Event) -> cel.Activation:
    return _ENV.Activation({"event": event_message(event), "data": _data(event.data)})


def _data(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # numbers beyond 64 bits: the json module takes them
        return json.loads(raw)


def _cel_message(text: str) -> str:
    """cel-cpp's first error as `line:column: what`, without its status code, its
    `<input>:` prefix and the drawing of the expression under it (one line)."""
    match = _CEL_ERROR.match(text.strip())
    message = (match.group(1) if match else text).splitlines()[0]
    return message.replace("<input>:", "", 1).replace(" (in container '')", "")


def _reads_outside_body(text: str) -> Iterator[int]:
    """Offsets of `data` and `event` inside a comprehension's parentheses."""
    code = _STRING.sub(lambda m: " " * len(m.group(0)), text)
    for macro in _COMPREHENSION.finditer(code):
        start = macro.end()
        end = _closing(code, start)
        for name in _TOP_LEVEL.finditer(code, start, end):
            yield name.start()


def _closing(code: str, start: int) -> int:
    depth = 1
    for index in range(start, len(code)):
        if code[index] in "([{":
            depth += 1
        elif code[index] in ")]}":
            depth -= 1
            if depth == 0:
                return index
    return len(code)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1
