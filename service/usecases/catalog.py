"""Event type catalog use cases, including the catalog file loaded at start."""

import asyncio
import contextlib
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import jsonschema_rs

from service.domain.access import Principal
from service.domain.event_rules import EventRejected, parse_data
from service.domain.models import Event, EventType
from service.domain.validation import compile_schema, schema_violation, validate_event_type
from service.errors import InvalidArgument, Unavailable
from service.store.event_types import EventTypeStore
from service.store.runner import StoreRunner

UPDATABLE = ("description", "required_scope", "json_schema", "example_json")
OUTPUT_ONLY = ("create_time", "update_time")


class CatalogError(Exception):
    """The catalog file cannot be loaded; the message says where and why."""


class CatalogService:
    """Every method is synchronous; the gRPC edge runs it on a store thread."""

    def __init__(self, store: EventTypeStore) -> None:
        self._store = store

    def list_page(
        self, principal: Principal, after: str | None, limit: int, subscribable_only: bool
    ) -> tuple[list[EventType], bool]:
        if not subscribable_only:
            return self._store.list_page(after, limit)
        # The catalog is small, so filtering by the caller's scopes happens here.
        names = sorted(self._store.catalog().values(), key=lambda e: e.name)
        allowed = [
            e
            for e in names
            if (after is None or e.name > after)
            and (not e.required_scope or principal.has(e.required_scope))
        ]
        return allowed[:limit], len(allowed) > limit

    def get(self, name: str) -> EventType:
        return self._store.get(name)

    def create(self, event_type: EventType) -> EventType:
        _validate(event_type)
        return self._store.create(event_type)

    def update(self, name: str, values: EventType, mask: frozenset[str]) -> EventType:
        def change(current: EventType) -> EventType:
            updated = replace(current, **{path: getattr(values, path) for path in mask})
            _validate(updated)
            return updated

        return self._store.update(name, change)

    def delete(self, name: str) -> None:
        self._store.delete(name)

    def load_file(self, path: Path) -> int:
        """Upserts every entry of a catalog file; raises CatalogError on the first bad one."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{path}: cannot read JSON: {exc}") from None
        entries = document.get("event_types") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise CatalogError(f'{path}: expected an object with an "event_types" list')
        parsed = []
        for index, raw in enumerate(entries):
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise CatalogError(f"{path}: event_types[{index}] needs a string name")
            event_type = EventType(
                name=raw["name"],
                description=str(raw.get("description", "")),
                required_scope=str(raw.get("required_scope", "")),
                json_schema=_as_json_text(raw.get("json_schema")),
                example_json=_as_json_text(raw.get("example")),
            )
            try:
                _validate(event_type, prefix=f"event_types[{index}]")
            except InvalidArgument as exc:
                raise CatalogError(f"{path}: {exc.message}") from None
            parsed.append(event_type)
        return self._store.upsert(parsed)


def _validate(event_type: EventType, prefix: str = "event_type") -> None:
    violations = validate_event_type(event_type, prefix)
    if violations:
        raise InvalidArgument(violations)


def _as_json_text(value: object) -> str:
    """The file holds schemas and examples as JSON values; the catalog keeps JSON text."""
    if value is None or value == "":
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


class EventTypeCheck:
    """What ingest checks against the catalog: the type exists and the data fits its schema.
    Built from a catalog snapshot; the composition root refreshes it."""

    def __init__(self, catalog: Mapping[str, EventType]) -> None:
        self.required_scopes = {name: e.required_scope for name, e in catalog.items()}
        self._validators: dict[str, jsonschema_rs.Validator | str] = {}
        for name, event_type in catalog.items():
            if event_type.json_schema:
                try:
                    self._validators[name] = compile_schema(json.loads(event_type.json_schema))
                except ValueError as exc:  # stored before create refused such schemas
                    self._validators[name] = str(exc)

    def __call__(self, event: Event) -> None:
        if event.type not in self.required_scopes:
            raise EventRejected(
                "UNKNOWN_EVENT_TYPE", f"{event.type!r} is not in the event type catalog"
            )
        validator = self._validators.get(event.type)
        if isinstance(validator, str):
            raise EventRejected("SCHEMA_UNUSABLE", f"the type's schema {validator}")
        if validator is not None:
            problem = schema_violation(validator, parse_data(event.data))
            if problem is not None:
                raise EventRejected(
                    "SCHEMA_VIOLATION", f"the data does not match the schema: {problem}"
                )


class CatalogCache:
    """The catalog as ingest and the planner check events against it: refreshed every few
    seconds, and at once after this instance changed it."""

    def __init__(self, runner: StoreRunner, store: EventTypeStore) -> None:
        self._runner = runner
        self._store = store
        self.check = EventTypeCheck({})
        self._refreshing: set[asyncio.Task[None]] = set()

    async def refresh(self) -> None:
        self.check = EventTypeCheck(await self._runner.call(self._store.catalog))

    def changed(self) -> None:
        """This instance changed the catalog: refresh now rather than at the next round."""
        task = asyncio.create_task(self._refresh_now(), name="catalog-refresh-now")
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _refresh_now(self) -> None:
        with contextlib.suppress(Unavailable):  # the next round refreshes it
            await self.refresh()

    def __call__(self, event: Event) -> None:
        self.check(event)

    def required_scopes(self) -> Mapping[str, str]:
        return self.check.required_scopes
