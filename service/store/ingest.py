"""The ingest transaction: a batch of events and their deliveries, stored in one go."""

import functools
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import peewee as pw

from service.domain import fan_out, filters, payloads
from service.domain.clock import unix_time, utcnow
from service.domain.models import Event, Ordering
from service.domain.ordering import is_ordered
from service.domain.outcomes import DeliveryStatus
from service.domain.pipeline import Ingested, Job
from service.store import bulk, ordered
from service.store.delivery_rows import stored_delivery_ids

_INSERT_EVENT = bulk.Insert(
    "events",
    (
        ("tenant", "text"),
        ("event_id", "text"),
        ("type", "text"),
        ("source", "text"),
        ("subject", "text"),
        ("occurred_at", "timestamp"),
        ("received_at", "timestamp"),
        ("data", "bytea"),
    ),
    skip_conflicts=True,
)
_INSERT_DELIVERY = bulk.Insert(
    "deliveries",
    (
        ("id", "text"),
        ("tenant", "text"),
        ("subscription_id", "text"),
        ("event_id", "bigint"),
        ("event_type", "text"),
        ("status", "smallint"),
        ("created_at", "timestamp"),
        ("next_attempt_at", "timestamp"),
        ("ordering_key", "text"),
    ),
    (("attempt_count", "0"), ("last_http_status", "0"), ("test", "FALSE"), ("manual", "FALSE")),
    skip_conflicts=True,
)
_EVENT_PKS = "SELECT id, event_id FROM events WHERE tenant = ? AND event_id IN ({})"
_NEWEST_EVENTS = "SELECT id, tenant, event_id FROM events ORDER BY id DESC LIMIT ?"
_STORED_EVENTS = "SELECT event_id, id, type, data FROM events WHERE tenant = ? AND event_id IN ({})"
_DELIVERY_PAIRS = "SELECT subscription_id, event_id FROM deliveries WHERE event_id IN ({})"
# Plain SQL: run per ingest batch, where the ORM's query building is a visible share of
# the service's CPU.
_ENABLED_SUBSCRIPTIONS = (
    "SELECT id, tenant, event_types, granted_scopes, payload_format, payload_template,"
    " filter_expression, ordering"
    " FROM subscriptions"
    " WHERE enabled = ? AND tenant IN ({})"
)


class IngestStore:
    """Every method is synchronous and runs on a store thread."""

    def __init__(self, db: pw.Database) -> None:
        self._db = db

    def ingest(
        self,
        events: Sequence[Event],
        required_scopes: Mapping[str, str],
        lease: timedelta,
        sent_ahead: Sequence[Job] = (),
    ) -> Ingested:
        """Stores a batch of events and their deliveries in one transaction.

        Deliveries that existed already (the batch was consumed before) are left to the
        retry scheduler, so nothing is sent twice because of a re-consumed event.
        `required_scopes` maps each event type to its subscribe scope (empty = none).
        `sent_ahead` are jobs planned before the transaction, from a cached view of the
        subscriptions, and being sent already: each is stored under its own id when this
        transaction matches its pair too, else it is reported as not stored.
        """
        ahead = {fan_out.pair(job): job for job in sent_ahead}
        if not events:
            return Ingested([], frozenset(job.delivery_id for job in sent_ahead))
        now = utcnow()
        with self._db.atomic():
            event_rows, known = self._insert_events(events, now)
            reused = _reused_ids(events, known)
            accepted = [e for i, e in enumerate(events) if i not in reused]
            subscriptions = self.matchers({e.tenant for e in accepted})
            # Only events stored before (a re-consumed batch) can have deliveries already.
            existing = self._existing_pairs([event_rows[k] for k in known])
            lease_end = now + lease
            plan = fan_out.plan_jobs(
                accepted, subscriptions, required_scopes, unix_time(lease_end), ahead
            )
            pending = int(DeliveryStatus.PENDING)
            created, leased = bulk.moment(self._db, now), bulk.moment(self._db, lease_end)
            rows: list[tuple[object, ...]] = []
            jobs = [
                job
                for job in plan.jobs
                if (job.subscription_id, event_rows[(job.tenant, job.event_id)]) not in existing
            ]
            # Ordered ones are the scheduler's: due now at the head of their key, else parked
            # until their turn (service.store.ordered).
            taken = ordered.keys_waiting(
                (job.subscription_id, job.ordering_key) for job in jobs if job.ordering_key
            )
            for job in jobs:
                event_pk = event_rows[(job.tenant, job.event_id)]
                due = leased
                if job.ordering_key:
                    turn = (job.subscription_id, job.ordering_key)
                    due = leased if turn in taken else created
                    taken.add(turn)
                # Leased to this process; the scheduler takes it over after a crash.
                rows.append(
                    (
                        job.delivery_id,
                        job.tenant,
                        job.subscription_id,
                        event_pk,
                        job.event_type,
                        pending,
                        created,
                        due,
                        job.ordering_key,
                    )
                )
            if bulk.insert(self._db, _INSERT_DELIVERY, rows) < len(rows):
                # Another instance stored some of these pairs a moment ago: it sends them.
                stored = stored_delivery_ids(self._db, [job.delivery_id for job in jobs])
                jobs = [job for job in jobs if job.delivery_id in stored]
        kept = {job.delivery_id for job in jobs}
        return Ingested(
            [job for job in jobs if fan_out.pair(job) not in ahead and not job.ordering_key],
            frozenset(job.delivery_id for job in sent_ahead if job.delivery_id not in kept),
            tuple(sorted(reused)),
            (plan.refused, plan.failed),
            sum(1 for job in jobs if job.ordering_key),
        )

    def reuses_id(self, event: Event) -> bool:
        """Whether the event's id names a stored event of another type or with other data."""
        key = (event.tenant, event.id)
        stored = self._stored_events([key]).get(key)
        return stored is not None and (stored.type, stored.data) != (event.type, event.data)

    def unseen(self, events: Sequence[Event]) -> list[Event]:
        """The events not stored yet: only their deliveries may be sent ahead of the
        transaction, or a re-consumed event would be sent again."""
        stored = self._event_pks({(e.tenant, e.id) for e in events})
        return [e for e in events if (e.tenant, e.id) not in stored]

    def _insert_events(
        self, events: Sequence[Event], now: datetime
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], "_StoredEvent"]]:
        """The row id of every event, inserting those not stored yet; and the rows of those
        that may have been stored before (a re-consumed batch, or another instance a moment
        ago), read once for their ids and their content."""
        unique: dict[tuple[str, str], Event] = {}
        for event in events:  # the first of an id is stored; a different later one is refused
            unique.setdefault((event.tenant, event.id), event)
        received = bulk.moment(self._db, now)
        rows = [
            (e.tenant, e.id, e.type, e.source, e.subject, e.time, received, e.data)
            for e in unique.values()
        ]
        returned = bulk.insert_returning(self._db, _INSERT_EVENT, rows, "id, tenant, event_id")
        if returned is not None:  # PostgreSQL: the new rows' keys came back
            pks = {(tenant, event_id): pk for pk, tenant, event_id in returned}
            known = self._stored_events(key for key in unique if key not in pks)
        else:
            if bulk.insert(self._db, _INSERT_EVENT, rows) == len(rows):
                return self._newest_event_pks(unique), {}  # usually every event is new
            # Otherwise all of them are treated as known: looking for existing deliveries
            # of a fresh event finds none, and its content is its own.
            pks, known = {}, self._stored_events(unique)
        pks.update({key: row.pk for key, row in known.items()})
        return pks, known

    def _newest_event_pks(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The row ids of the events this transaction just inserted on SQLite, in one
        statement whatever their tenants: holding the write lock since, they are the newest
        rows (checked; else looked up per tenant)."""
        statement = bulk.sql(self._db, _NEWEST_EVENTS)
        newest = self._db.execute_sql(statement, (len(keys),)).fetchall()  # type: ignore[no-untyped-call]
        pks = {(tenant, event_id): pk for pk, tenant, event_id in newest}
        return pks if pks.keys() == set(keys) else self._event_pks(keys)

    def _event_pks(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        return {(tenant, row[1]): row[0] for tenant, row in self._per_tenant(_EVENT_PKS, keys)}

    def _stored_events(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], "_StoredEvent"]:
        """The row id, type and data of the stored events among `keys`."""
        return {
            (tenant, event_id): _StoredEvent(pk, type_, bytes(data))
            for tenant, (event_id, pk, type_, data) in self._per_tenant(_STORED_EVENTS, keys)
        }

    def _per_tenant(
        self, query: str, keys: Iterable[tuple[str, str]]
    ) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """Rows of an events query by (tenant, event id) keys, one statement per tenant."""
        by_tenant: dict[str, list[str]] = {}
        for tenant, event_id in keys:
            by_tenant.setdefault(tenant, []).append(event_id)
        for tenant, event_ids in by_tenant.items():
            # Both columns of the unique (tenant, event_id) index, so it is used.
            for row in bulk.rows_in(self._db, query, event_ids, tenant):
                yield tenant, row

    def matchers(self, tenants: Iterable[str]) -> dict[str, list[fan_out.Matcher]]:
        """The enabled subscriptions of the tenants, as matching needs them."""
        out: dict[str, list[fan_out.Matcher]] = {}
        for row in bulk.rows_in(self._db, _ENABLED_SUBSCRIPTIONS, list(tenants), True):
            out.setdefault(row[1], []).append(_matcher(*row))
        return out

    def _existing_pairs(self, event_pks: Sequence[int]) -> set[tuple[str, int]]:
        rows = bulk.rows_in(self._db, _DELIVERY_PAIRS, event_pks)
        return {(subscription_id, event_pk) for subscription_id, event_pk in rows}


@functools.lru_cache(maxsize=16_384)
def _matcher(
    subscription_id: str,
    tenant: str,
    types: str,
    scopes: str,
    kind: int,
    template: str,
    rule: str,
    order: int,
) -> fan_out.Matcher:
    """A stored subscription as matching needs it: the same row read again (every ingest
    transaction reads its tenants' rows) is not parsed again."""
    return fan_out.Matcher(
        subscription_id,
        tuple(json.loads(types)),
        frozenset(json.loads(scopes)),
        payloads.stored(kind, template),
        filters.stored(rule),
        is_ordered(Ordering(order)),
    )


class _StoredEvent(NamedTuple):
    pk: int
    type: str
    data: bytes


def _reused_ids(
    events: Sequence[Event], stored: Mapping[tuple[str, str], _StoredEvent]
) -> set[int]:
    """Positions of the events whose (tenant, id) is stored, or came earlier in the batch,
    with another type or other data: an id names one event, so a copy may only repeat it
    (a producer's retry, a re-consumed batch), never carry new content under it."""
    first: dict[tuple[str, str], tuple[str, bytes]] = {}
    out = set()
    for index, event in enumerate(events):
        key = (event.tenant, event.id)
        content = (event.type, event.data)
        row = stored.get(key)
        original = (row.type, row.data) if row is not None else first.setdefault(key, content)
        if content != original:
            out.add(index)
    return out
