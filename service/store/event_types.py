"""The event type catalog: queries and upserts."""

import json
from collections.abc import Callable, Iterable

import peewee as pw

from service.domain.clock import utcnow
from service.domain.models import EventType
from service.errors import AlreadyExists, FailedPrecondition, NotFound
from service.store.tables import EventTypeRow, SubscriptionRow


class EventTypeStore:
    """Every method is synchronous and runs on a store thread."""

    def __init__(self, db: pw.Database) -> None:
        self._db = db

    def catalog(self) -> dict[str, EventType]:
        """The whole catalog by name (it is small: tens to hundreds of types)."""
        return {row.name: _to_domain(row) for row in EventTypeRow.select()}

    def list_page(self, after: str | None, limit: int) -> tuple[list[EventType], bool]:
        query = EventTypeRow.select()
        if after is not None:
            query = query.where(EventTypeRow.name > after)
        rows = list(query.order_by(EventTypeRow.name).limit(limit + 1))
        return [_to_domain(r) for r in rows[:limit]], len(rows) > limit

    def get(self, name: str) -> EventType:
        row = EventTypeRow.get_or_none(EventTypeRow.name == name)
        if row is None:
            raise NotFound(f"event type {name!r} not found", reason="EVENT_TYPE_NOT_FOUND")
        return _to_domain(row)

    def create(self, event_type: EventType) -> EventType:
        now = utcnow()
        try:
            with self._db.atomic():
                EventTypeRow.create(created_at=now, updated_at=now, **_columns(event_type))
        except pw.IntegrityError:
            raise AlreadyExists(
                f"event type {event_type.name!r} already exists", reason="EVENT_TYPE_EXISTS"
            ) from None
        return self.get(event_type.name)

    def update(self, name: str, change: Callable[[EventType], EventType]) -> EventType:
        with self._db.atomic():
            updated = change(self.get(name))
            EventTypeRow.update(updated_at=utcnow(), **_columns(updated)).where(
                EventTypeRow.name == name
            ).execute()
        return self.get(name)

    def delete(self, name: str) -> None:
        """Refuses while a subscription of any tenant names the type exactly."""
        with self._db.atomic():
            self.get(name)
            needle = json.dumps(name)  # names are stored as a JSON list of strings
            users = [
                row.id
                for row in SubscriptionRow.select(
                    SubscriptionRow.id, SubscriptionRow.event_types
                ).where(SubscriptionRow.event_types.contains(needle))
                if name in json.loads(row.event_types)
            ]
            if users:
                raise FailedPrecondition(
                    f"event type {name!r} is named by {len(users)} subscription(s); "
                    "remove it from them first",
                    reason="EVENT_TYPE_IN_USE",
                    metadata={"subscriptions": str(len(users))},
                )
            EventTypeRow.delete().where(EventTypeRow.name == name).execute()

    def upsert(self, event_types: Iterable[EventType]) -> int:
        """Writes catalog-file entries: new ones are added, existing ones take the file's values."""
        count = 0
        with self._db.atomic():
            for event_type in event_types:
                now = utcnow()
                updated = (
                    EventTypeRow.update(updated_at=now, **_columns(event_type))
                    .where(EventTypeRow.name == event_type.name)
                    .execute()
                )
                if not updated:
                    EventTypeRow.create(created_at=now, updated_at=now, **_columns(event_type))
                count += 1
        return count


def _columns(event_type: EventType) -> dict[str, str]:
    return {
        "name": event_type.name,
        "description": event_type.description,
        "required_scope": event_type.required_scope,
        "json_schema": event_type.json_schema,
        "example_json": event_type.example_json,
    }


def _to_domain(row: EventTypeRow) -> EventType:
    return EventType(
        name=row.name,
        description=row.description,
        required_scope=row.required_scope,
        json_schema=row.json_schema,
        example_json=row.example_json,
        create_time=row.created_at,
        update_time=row.updated_at,
    )
