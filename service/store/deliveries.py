"""Events, deliveries, attempts and the audit outbox: the pipeline's transactions and queries."""

import json
import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import peewee as pw

from service.crypto import SecretBox
from service.domain import fan_out
from service.domain.clock import unix_time, utcnow
from service.domain.deliveries import AttemptRecord, DeliveryFilter, DeliveryView, Job, Target
from service.domain.envelope import webhook_body
from service.domain.ids import new_id
from service.domain.models import DisabledReason, Event
from service.domain.outcomes import DeliveryStatus, ErrorKind, Outcome, Trigger
from service.domain.signing import secret_key
from service.errors import FailedPrecondition, NotFound
from service.store import bulk
from service.store.subscriptions import live_secrets
from service.store.tables import (
    AttemptRow,
    DeliveryRow,
    EventRow,
    OutboxRow,
    SubscriptionRow,
)

_INSERT_ATTEMPT = bulk.Insert(
    "attempts",
    (
        ("id", "text"),
        ("delivery_id", "text"),
        ("attempt_number", "integer"),
        ("trigger", "smallint"),
        ("started_at", "timestamp"),
        ("latency_ms", "integer"),
        ("url", "text"),
        ("http_status", "integer"),
        ("response_body", "text"),
        ("error_kind", "smallint"),
        ("error_message", "text"),
        ("outcome", "smallint"),
        ("next_attempt_at", "timestamp"),
    ),
)
# What an attempt changes of its delivery (bulk.update_rows), with PostgreSQL's types.
_DELIVERY_ATTEMPTED = (
    ("status", "smallint"),
    ("attempt_count", "integer"),
    ("last_http_status", "integer"),
    ("last_attempt_at", "timestamp"),
    ("next_attempt_at", "timestamp"),
)
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
    ),
    (("attempt_count", "0"), ("last_http_status", "0"), ("test", "FALSE"), ("manual", "FALSE")),
    skip_conflicts=True,
)
_INSERT_OUTBOX = bulk.Insert(
    "outbox",
    (("topic", "text"), ("key", "bytea"), ("value", "bytea"), ("created_at", "timestamp")),
)
# Claims the oldest unclaimed (or abandoned) outbox rows; SKIP LOCKED keeps two
# publishers from waiting on, or taking, the same rows.
_CLAIM_OUTBOX = (
    "UPDATE outbox SET claimed_until = ? WHERE id IN (SELECT id FROM outbox"
    " WHERE claimed_until IS NULL OR claimed_until < ? ORDER BY id LIMIT ?"
    " FOR UPDATE SKIP LOCKED) RETURNING id, topic, key, value"
)
_RELEASE_OUTBOX = "UPDATE outbox SET claimed_until = NULL WHERE id IN ({})"
_OUTBOX_BATCH = "SELECT id, topic, key, value FROM outbox ORDER BY id LIMIT ?"
_EVENT_PKS = "SELECT id, event_id FROM events WHERE tenant = ? AND event_id IN ({})"
_STORED_EVENTS = "SELECT event_id, id, type, data FROM events WHERE tenant = ? AND event_id IN ({})"
_DELIVERY_PAIRS = "SELECT subscription_id, event_id FROM deliveries WHERE event_id IN ({})"
# Per ingest batch: through the ORM, building the query and its rows took 8% of the
# service's CPU at 1,000 events/s (make bench, latency).
_ENABLED_SUBSCRIPTIONS = (
    "SELECT id, tenant, event_types, granted_scopes FROM subscriptions"
    " WHERE enabled = ? AND tenant IN ({})"
)
_STORED_DELIVERIES = "SELECT id FROM deliveries WHERE id IN ({})"
# The batch's last attempt decides: cleared (succeeded), or failing since the given time, or
# since whenever it started failing (now if it was not).
_UPDATE_SUBSCRIPTION = (
    "UPDATE subscriptions SET last_delivery_at = ?, last_delivery_status = ?,"
    " failing_since = CASE WHEN ? THEN NULL ELSE COALESCE(?, failing_since, ?) END WHERE id = ?"
)
_DISABLE_SUBSCRIPTION = "UPDATE subscriptions SET enabled = FALSE, disabled_reason = ? WHERE id = ?"
# Longer than any publish takes; a crashed publisher's rows go to another after it.
OUTBOX_CLAIM = timedelta(seconds=30)
_STATUS = {
    Outcome.SUCCEEDED: DeliveryStatus.SUCCEEDED,
    Outcome.RETRY_SCHEDULED: DeliveryStatus.PENDING,
    Outcome.FAILED: DeliveryStatus.FAILED,
}


def _attempt_row(a: AttemptRecord) -> tuple[object, ...]:
    return (
        a.attempt_id,
        a.delivery_id,
        a.attempt_number,
        int(a.trigger),
        a.attempt_time,
        a.latency_ms,
        a.url,
        a.http_status,
        a.response_body,
        int(a.error_kind),
        a.error_message,
        int(a.outcome),
        a.next_attempt_time,
    )


@dataclass(frozen=True)
class OutboxRecord:
    id: int
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class RecordedAttempt:
    """What `record_attempts` writes for one attempt."""

    attempt: AttemptRecord
    disable: DisabledReason | None
    audit_topic: str
    audit_value: bytes

    @property
    def audit_key(self) -> bytes:
        """The audit record's Kafka key, whether it goes out directly or from the outbox: its
        subscription, so one endpoint's attempts stay in order."""
        return self.attempt.subscription_id.encode()


@dataclass(frozen=True)
class Ingested:
    """What an ingest transaction stored: jobs for the deliveries it created that were not
    sent ahead, the ids of the jobs sent ahead whose deliveries it did not store, and the
    positions in the batch of the events refused because their id names another event."""

    jobs: list[Job]
    not_stored: frozenset[str]
    reused_ids: tuple[int, ...] = ()


class DeliveryStore:
    """Every method is synchronous and runs on a store thread."""

    def __init__(self, db: pw.Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    # -- ingest ------------------------------------------------------------------

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
            planned = fan_out.plan_jobs(
                accepted, subscriptions, required_scopes, unix_time(lease_end), ahead
            )
            pending = int(DeliveryStatus.PENDING)
            created, leased = bulk.moment(self._db, now), bulk.moment(self._db, lease_end)
            jobs: list[Job] = []
            rows: list[tuple[object, ...]] = []
            for job in planned:
                event_pk = event_rows[(job.tenant, job.event_id)]
                if (job.subscription_id, event_pk) in existing:
                    continue
                jobs.append(job)
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
                        leased,
                    )
                )
            if bulk.insert(self._db, _INSERT_DELIVERY, rows) < len(rows):
                # Another instance stored some of these pairs a moment ago: it sends them.
                stored = self._stored_ids([job.delivery_id for job in jobs])
                jobs = [job for job in jobs if job.delivery_id in stored]
        kept = {job.delivery_id for job in jobs}
        return Ingested(
            [job for job in jobs if fan_out.pair(job) not in ahead],
            frozenset(job.delivery_id for job in sent_ahead if job.delivery_id not in kept),
            tuple(sorted(reused)),
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

    def _stored_ids(self, delivery_ids: Sequence[str]) -> set[str]:
        return {row[0] for row in bulk.rows_in(self._db, _STORED_DELIVERIES, delivery_ids)}

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
                return self._event_pks(unique), {}  # usually every event is new
            # Otherwise all of them are treated as known: looking for existing deliveries
            # of a fresh event finds none, and its content is its own.
            pks, known = {}, self._stored_events(unique)
        pks.update({key: row.pk for key, row in known.items()})
        return pks, known

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
        for subscription_id, tenant, types, scopes in bulk.rows_in(
            self._db, _ENABLED_SUBSCRIPTIONS, list(tenants), True
        ):
            matcher = fan_out.Matcher(
                subscription_id, tuple(json.loads(types)), frozenset(json.loads(scopes))
            )
            out.setdefault(tenant, []).append(matcher)
        return out

    def _existing_pairs(self, event_pks: Sequence[int]) -> set[tuple[str, int]]:
        rows = bulk.rows_in(self._db, _DELIVERY_PAIRS, event_pks)
        return {(subscription_id, event_pk) for subscription_id, event_pk in rows}

    # -- dispatch ----------------------------------------------------------------

    def claim_due(self, limit: int, lease: timedelta) -> list[Job]:
        """Takes up to `limit` due deliveries, leasing them so no other claimer takes them too."""
        now = utcnow()
        with self._db.atomic():
            query = (
                DeliveryRow.select(DeliveryRow.id)
                .where(
                    (DeliveryRow.status == int(DeliveryStatus.PENDING))
                    & (DeliveryRow.next_attempt_at <= now)
                )
                .order_by(DeliveryRow.next_attempt_at)
                .limit(limit)
            )
            if self._db.for_update:
                query = query.for_update(skip_locked=True)  # several instances claim disjoint rows
            ids = [row.id for row in query]
            if not ids:
                return []
            DeliveryRow.update(next_attempt_at=now + lease).where(DeliveryRow.id.in_(ids)).execute()
            return self._jobs(ids, lease_until=unix_time(now + lease))

    def _jobs(
        self,
        delivery_ids: Sequence[str],
        trigger: Trigger | None = None,
        lease_until: float = math.inf,
    ) -> list[Job]:
        rows = (
            DeliveryRow.select(DeliveryRow, EventRow)
            .join(EventRow)
            .where(DeliveryRow.id.in_(list(delivery_ids)))
        )
        jobs = []
        for row in rows:
            event = row.event
            jobs.append(
                Job(
                    delivery_id=row.id,
                    subscription_id=row.subscription_id,
                    tenant=row.tenant,
                    event_id=event.event_id,
                    event_type=event.type,
                    body=webhook_body(
                        event.event_id,
                        event.type,
                        event.occurred_at,
                        event.tenant,
                        bytes(event.data),
                        test=row.test,
                    ),
                    attempts_made=row.attempt_count,
                    trigger=trigger or _trigger(row),
                    test=row.test,
                    event_time=event.occurred_at,
                    lease_until=lease_until,
                )
            )
        return jobs

    def targets(self, subscription_ids: Iterable[str]) -> dict[str, Target]:
        """Where and how to send, with the live secrets decrypted; absent ids were deleted."""
        ids = list(set(subscription_ids))
        if not ids:
            return {}
        secrets = live_secrets(self._db, ids)
        out = {}
        for row in SubscriptionRow.select().where(SubscriptionRow.id.in_(ids)):
            headers = (
                json.loads(self._box.decrypt(row.headers_encrypted))
                if row.headers_encrypted
                else {}
            )
            out[row.id] = Target(
                subscription_id=row.id,
                tenant=row.tenant,
                url=row.url,
                headers=headers,
                secret_keys=tuple(
                    secret_key(self._box.decrypt(s.secret_encrypted))
                    for s in secrets.get(row.id, ())
                ),
                rate_limit_per_second=row.rate_limit_per_second,
                enabled=row.enabled,
                failing_since=row.failing_since,
            )
        return out

    def record_attempts(
        self, items: Sequence[RecordedAttempt], *, audited: Collection[str] = ()
    ) -> None:
        """Stores attempts, moves their deliveries on, updates the subscriptions and queues the
        audit records in the outbox (but those of the attempt ids in `audited`, which the
        broker acked already), all in one transaction (deliveries deleted meanwhile are
        skipped)."""
        if not items:
            return
        db = self._db
        with db.atomic():
            now = utcnow()
            stamp = bulk.moment(db, now)
            # First, so a delivery deleted meanwhile shows (its update finds no row) and the
            # rest stay (PostgreSQL locks them) while their attempts are inserted.
            found = bulk.update_rows(
                db,
                "deliveries",
                _DELIVERY_ATTEMPTED,
                [
                    (
                        int(_STATUS[i.attempt.outcome]),
                        i.attempt.attempt_number,
                        i.attempt.http_status,
                        stamp,
                        i.attempt.next_attempt_time,
                        i.attempt.delivery_id,
                    )
                    for i in items
                ],
                also="manual = FALSE",
            )
            # SQLite: the writer holds the whole database, so a lookup answers the same.
            alive = (
                found
                if found is not None
                else self._stored_ids(list({i.attempt.delivery_id for i in items}))
            )
            live = [i for i in items if i.attempt.delivery_id in alive]
            bulk.insert(db, _INSERT_ATTEMPT, [_attempt_row(i.attempt) for i in live])
            self._update_subscriptions([i for i in live if not i.attempt.test], now)
            bulk.insert(
                db,
                _INSERT_OUTBOX,
                [
                    (i.audit_topic, i.audit_key, i.audit_value, stamp)
                    for i in live
                    if i.attempt.attempt_id not in audited
                ],
            )

    def _update_subscriptions(self, items: Sequence[RecordedAttempt], now: datetime) -> None:
        """One update per subscription for the whole batch: its last attempt decides the last
        delivery status and whether it is failing; any disabling decision in the batch holds."""
        by_subscription: dict[str, list[RecordedAttempt]] = {}
        for item in items:
            by_subscription.setdefault(item.attempt.subscription_id, []).append(item)
        updates, disables = [], []
        for subscription_id, attempts in by_subscription.items():
            last = attempts[-1].attempt
            if last.outcome == Outcome.SUCCEEDED:
                cleared, failing = True, None
            elif any(a.attempt.outcome == Outcome.SUCCEEDED for a in attempts):
                cleared, failing = False, now  # failing again since this batch
            else:
                cleared, failing = False, None  # failing since whenever it started
            updates.append((now, last.http_status, cleared, failing, now, subscription_id))
            disable = next((a.disable for a in attempts if a.disable is not None), None)
            if disable is not None:
                disables.append((int(disable), subscription_id))
        bulk.execute_many(self._db, _UPDATE_SUBSCRIPTION, updates)
        bulk.execute_many(self._db, _DISABLE_SUBSCRIPTION, disables)

    def defer(self, delivery_ids: Sequence[str], until: datetime) -> None:
        """Moves leased deliveries to a later time without counting an attempt."""
        if delivery_ids:
            DeliveryRow.update(next_attempt_at=until).where(
                DeliveryRow.id.in_(list(delivery_ids))
                & (DeliveryRow.status == int(DeliveryStatus.PENDING))
            ).execute()

    def fail_disabled(self, delivery_ids: Sequence[str]) -> None:
        """Marks deliveries to a disabled subscription FAILED (RecoverDeliveries re-queues them)."""
        if delivery_ids:
            DeliveryRow.update(status=int(DeliveryStatus.FAILED), next_attempt_at=None).where(
                DeliveryRow.id.in_(list(delivery_ids))
                & (DeliveryRow.status == int(DeliveryStatus.PENDING))
            ).execute()

    # -- outbox ------------------------------------------------------------------

    def outbox_batch(self, limit: int) -> list[OutboxRecord]:
        """The oldest records to publish. On PostgreSQL, where several instances publish,
        they are claimed for OUTBOX_CLAIM so no other publisher sends them too."""
        if self._db.for_update:
            now = utcnow()
            with self._db.atomic():
                cursor = self._db.execute_sql(  # type: ignore[no-untyped-call]
                    bulk.sql(self._db, _CLAIM_OUTBOX), (now + OUTBOX_CLAIM, now, limit)
                )
                rows: Iterable[tuple[int, str, bytes | None, bytes]] = sorted(cursor.fetchall())
        else:
            cursor = self._db.execute_sql(_OUTBOX_BATCH, (limit,))  # type: ignore[no-untyped-call]
            rows = cursor.fetchall()
        return [
            OutboxRecord(pk, topic, bytes(key) if key else None, bytes(value))
            for pk, topic, key, value in rows
        ]

    def outbox_delete(self, ids: Sequence[int]) -> None:
        bulk.execute_in(self._db, "DELETE FROM outbox WHERE id IN ({})", ids)

    def outbox_release(self, ids: Sequence[int]) -> None:
        """Gives claimed records back after a failed publish, for the next try of anyone."""
        if self._db.for_update:
            bulk.execute_in(self._db, _RELEASE_OUTBOX, ids)

    def outbox_size(self) -> int:
        return int(OutboxRow.select().count())

    def pending_count(self) -> int:
        # Every pending delivery has a next attempt time (due or leased), finished ones none:
        # counting on the indexed column avoids a scan of the whole history.
        return int(DeliveryRow.select().where(DeliveryRow.next_attempt_at.is_null(False)).count())

    # -- API queries and manual actions -------------------------------------------

    def list_page(
        self, tenant: str, where: DeliveryFilter, after: str | None, limit: int
    ) -> tuple[list[DeliveryView], bool]:
        """Newest first."""
        query = (
            DeliveryRow.select(DeliveryRow, EventRow.event_id)
            .join(EventRow)
            .where(DeliveryRow.tenant == tenant)
        )
        if where.subscription_id:
            query = query.where(DeliveryRow.subscription == where.subscription_id)
        if where.statuses:
            query = query.where(DeliveryRow.status.in_([int(s) for s in where.statuses]))
        if where.event_type:
            query = query.where(DeliveryRow.event_type == where.event_type)
        if where.start_time:
            query = query.where(DeliveryRow.created_at >= where.start_time)
        if where.end_time:
            query = query.where(DeliveryRow.created_at < where.end_time)
        if after is not None:
            query = query.where(DeliveryRow.id < after)
        rows = list(query.order_by(DeliveryRow.id.desc()).limit(limit + 1))
        return [_view(r) for r in rows[:limit]], len(rows) > limit

    def get(self, tenant: str, delivery_id: str) -> DeliveryView:
        row = (
            DeliveryRow.select(DeliveryRow, EventRow.event_id)
            .join(EventRow)
            .where((DeliveryRow.id == delivery_id) & (DeliveryRow.tenant == tenant))
            .get_or_none()
        )
        if row is None:
            raise NotFound(f"delivery {delivery_id!r} not found", reason="DELIVERY_NOT_FOUND")
        attempts = (
            AttemptRow.select()
            .where(AttemptRow.delivery == delivery_id)
            .order_by(AttemptRow.attempt_number)
        )
        return _view(row, tuple(_attempt(row, a) for a in attempts))

    def retry(self, tenant: str, delivery_id: str) -> DeliveryView:
        """Queues another attempt now (manual trigger), whatever the status."""
        with self._db.atomic():
            view = self.get(tenant, delivery_id)
            target = SubscriptionRow.get_or_none(SubscriptionRow.id == view.subscription_id)
            if target is None or not target.enabled:
                raise FailedPrecondition(
                    "the subscription is disabled; enable it first", reason="SUBSCRIPTION_DISABLED"
                )
            DeliveryRow.update(
                status=int(DeliveryStatus.PENDING), next_attempt_at=utcnow(), manual=True
            ).where(DeliveryRow.id == delivery_id).execute()
        return self.get(tenant, delivery_id)

    def recover(self, tenant: str, subscription_id: str, since: datetime) -> int:
        """Queues every FAILED delivery of the subscription created since `since`."""
        with self._db.atomic():
            sub = SubscriptionRow.get_or_none(
                (SubscriptionRow.id == subscription_id) & (SubscriptionRow.tenant == tenant)
            )
            if sub is None:
                raise NotFound(
                    f"subscription {subscription_id!r} not found", reason="SUBSCRIPTION_NOT_FOUND"
                )
            if not sub.enabled:
                raise FailedPrecondition(
                    "the subscription is disabled; enable it first", reason="SUBSCRIPTION_DISABLED"
                )
            return int(
                DeliveryRow.update(
                    status=int(DeliveryStatus.PENDING), next_attempt_at=utcnow(), manual=True
                )
                .where(
                    (DeliveryRow.subscription == subscription_id)
                    & (DeliveryRow.status == int(DeliveryStatus.FAILED))
                    & (DeliveryRow.created_at >= since)
                )
                .execute()
            )

    def create_test_delivery(
        self, tenant: str, subscription_id: str, event: Event, lease: timedelta
    ) -> Job:
        """A delivery of a test event to one subscription, leased to the caller for sending now."""
        now = utcnow()
        with self._db.atomic():
            sub = SubscriptionRow.get_or_none(
                (SubscriptionRow.id == subscription_id) & (SubscriptionRow.tenant == tenant)
            )
            if sub is None:
                raise NotFound(
                    f"subscription {subscription_id!r} not found", reason="SUBSCRIPTION_NOT_FOUND"
                )
            row = EventRow.create(
                tenant=tenant,
                event_id=event.id,
                type=event.type,
                occurred_at=event.time,
                received_at=now,
                data=event.data,
            )
            delivery_id = new_id("msg")
            DeliveryRow.create(
                id=delivery_id,
                tenant=tenant,
                subscription=subscription_id,
                event=row.id,
                event_type=event.type,
                status=int(DeliveryStatus.PENDING),
                test=True,
                created_at=now,
                next_attempt_at=now + lease,
            )
        return self._jobs([delivery_id], Trigger.TEST)[0]


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


def _trigger(row: DeliveryRow) -> Trigger:
    if row.test:
        return Trigger.TEST
    return Trigger.MANUAL if row.manual else Trigger.SCHEDULED


def _view(row: DeliveryRow, attempts: tuple[AttemptRecord, ...] = ()) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        subscription_id=row.subscription_id,
        event_id=row.event.event_id,
        event_type=row.event_type,
        status=DeliveryStatus(row.status),
        attempt_count=row.attempt_count,
        last_http_status=row.last_http_status,
        create_time=row.created_at,
        last_attempt_time=row.last_attempt_at,
        next_attempt_time=row.next_attempt_at if row.status == DeliveryStatus.PENDING else None,
        test=row.test,
        attempts=attempts,
    )


def _attempt(delivery: DeliveryRow, row: AttemptRow) -> AttemptRecord:
    return AttemptRecord(
        attempt_id=row.id,
        delivery_id=delivery.id,
        subscription_id=delivery.subscription_id,
        event_id=delivery.event.event_id,
        tenant=delivery.tenant,
        event_type=delivery.event_type,
        attempt_number=row.attempt_number,
        url=row.url,
        trigger=Trigger(row.trigger),
        attempt_time=row.started_at,
        latency_ms=row.latency_ms,
        http_status=row.http_status,
        error_kind=ErrorKind(row.error_kind),
        error_message=row.error_message,
        response_body=row.response_body,
        outcome=Outcome(row.outcome),
        next_attempt_time=row.next_attempt_at,
        test=delivery.test,
    )
