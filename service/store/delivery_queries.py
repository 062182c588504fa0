"""What the API asks of deliveries: pages and single deliveries with their attempts, manual
retry and recovery, test deliveries, and the pending count."""

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import peewee as pw

from service.domain import event_patterns, fan_out, filters
from service.domain.clock import utcnow
from service.domain.ids import new_id
from service.domain.models import Event
from service.domain.outcomes import DeliveryStatus, ErrorKind, Outcome, Trigger
from service.domain.pipeline import AttemptRecord, DeliveryFilter, DeliveryView, Job
from service.errors import FailedPrecondition, NotFound, invalid
from service.store import idempotency, ordered
from service.store.delivery_rows import event_of, jobs_for
from service.store.tables import (
    AttemptRow,
    DeliveryRow,
    EventRow,
    IdempotencyRow,
    SubscriptionRow,
)

_REPLAY = "ReplayEvents"
REPLAY_INSERT_BATCH = 500


@dataclass(frozen=True)
class Replay:
    """What ReplayEvents selects: events received in [since, until) of `event_type` (a
    name or pattern; "" = any) that the subscription takes now, at most `limit`. `key`
    marks its deliveries; with a `request_hash`, the call is remembered by request_id."""

    since: datetime
    until: datetime
    event_type: str
    key: str
    limit: int
    required_scopes: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    request_hash: str = ""


class DeliveryQueries:
    """Every method is synchronous and runs on a store thread."""

    def __init__(self, db: pw.Database) -> None:
        self._db = db

    def pending_count(self) -> int:
        # Every pending delivery has a next attempt time (due or leased), finished ones none:
        # counting on the indexed column avoids a scan of the whole history.
        return int(DeliveryRow.select().where(DeliveryRow.next_attempt_at.is_null(False)).count())

    def list_page(
        self, tenant: str, where: DeliveryFilter, after: str | None, limit: int, skip: int = 0
    ) -> tuple[list[DeliveryView], bool]:
        """Newest first: a page after the id `after` and `skip` more."""
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
        rows = list(query.order_by(DeliveryRow.id.desc()).limit(limit + 1).offset(skip))
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
            # A delivery's subscription is its tenant's: deleting one deletes the other.
            self._enabled(tenant, self.get(tenant, delivery_id).subscription_id)
            DeliveryRow.update(
                status=int(DeliveryStatus.PENDING),
                next_attempt_at=utcnow(),
                manual=True,
                holds_key=False,  # pending, it holds its key back as any pending one does
            ).where(DeliveryRow.id == delivery_id).execute()
        return self.get(tenant, delivery_id)

    def release(self, tenant: str, delivery_id: str) -> DeliveryView:
        """Lets the key a FAILED delivery holds go on; FailedPrecondition if it holds none."""
        with self._db.atomic():
            view = self.get(tenant, delivery_id)
            if not view.holds_key:
                raise FailedPrecondition(
                    "the delivery holds no ordering key (only a FAILED delivery of an"
                    " ORDERING_PER_KEY_HOLD subscription does)",
                    reason="DELIVERY_NOT_HOLDING",
                )
            DeliveryRow.update(holds_key=False).where(DeliveryRow.id == delivery_id).execute()
            ordered.next_turn(self._db, [delivery_id], utcnow())
        return self.get(tenant, delivery_id)

    def recover(
        self,
        tenant: str,
        subscription_id: str,
        window: tuple[datetime, datetime],
        statuses: Collection[DeliveryStatus],
    ) -> int:
        """Queues the subscription's deliveries in these statuses created in the window."""
        since, until = window
        with self._db.atomic():
            self._enabled(tenant, subscription_id)
            return int(
                DeliveryRow.update(
                    status=int(DeliveryStatus.PENDING),
                    next_attempt_at=utcnow(),
                    manual=True,
                    holds_key=False,
                )
                .where(
                    (DeliveryRow.subscription == subscription_id)
                    & (DeliveryRow.status.in_([int(s) for s in statuses]))
                    & (DeliveryRow.created_at >= since)
                    & (DeliveryRow.created_at < until)
                )
                .execute()
            )

    def replay(self, tenant: str, subscription_id: str, replay: Replay) -> int:
        """New deliveries of the stored events the replay selects, or, when its key was
        used before, those it made then; raises InvalidArgument above `replay.limit`."""
        with self._db.atomic():
            sub = self._enabled(tenant, subscription_id)
            if replay.request_hash:
                known = idempotency.remembered(
                    tenant, _REPLAY, replay.request_id, replay.request_hash
                )
                if known is not None:
                    return self._replay_count(subscription_id, replay.key)
            matcher = fan_out.Matcher(
                sub.id,
                tuple(json.loads(sub.event_types)),
                frozenset(json.loads(sub.granted_scopes)),
            )
            rule = filters.stored(sub.filter_expression)
            events = []
            test_events = DeliveryRow.select(DeliveryRow.id).where(
                (DeliveryRow.event == EventRow.id) & (DeliveryRow.test == True)  # noqa: E712
            )
            columns = [EventRow.id, EventRow.type]
            if rule is not None:
                columns += [EventRow.event_id, EventRow.tenant, EventRow.occurred_at]
                columns += [EventRow.data, EventRow.source, EventRow.subject]
            query = EventRow.select(*columns).where(
                (EventRow.tenant == tenant)
                & (EventRow.received_at >= replay.since)
                & (EventRow.received_at < replay.until)
                # SendTestEvent's samples are stored as events too; they are not replayed.
                & ~pw.fn.EXISTS(test_events)
            )
            if replay.event_type and not event_patterns.is_pattern(replay.event_type):
                query = query.where(EventRow.type == replay.event_type)
            for row in query.order_by(EventRow.received_at, EventRow.id).iterator():
                wanted = not replay.event_type or event_patterns.pattern_matches(
                    replay.event_type, row.type
                )
                scope = replay.required_scopes.get(row.type, "")
                if not (wanted and fan_out.matches(matcher, row.type, scope)):
                    continue
                if rule is None or filters.EventView(event_of(row)).passes(rule):
                    events.append((row.id, row.type))
                    if len(events) > replay.limit:
                        raise invalid(
                            "since",
                            f"the window holds more than {replay.limit} events to replay;"
                            " narrow since and until",
                            "REPLAY_TOO_LARGE",
                        )
            now = utcnow()
            rows = [
                {
                    "id": new_id("msg"),
                    "tenant": tenant,
                    "subscription": subscription_id,
                    "event": event_id,
                    "event_type": event_type,
                    "status": int(DeliveryStatus.PENDING),
                    "created_at": now,
                    "next_attempt_at": now,
                    "replay": replay.key,
                }
                for event_id, event_type in events
            ]
            for start in range(0, len(rows), REPLAY_INSERT_BATCH):
                chunk = rows[start : start + REPLAY_INSERT_BATCH]
                DeliveryRow.insert_many(chunk).on_conflict_ignore().execute()
            if replay.request_hash:
                IdempotencyRow.create(
                    tenant=tenant,
                    method=_REPLAY,
                    request_id=replay.request_id,
                    request_hash=replay.request_hash,
                    resource_id=subscription_id,
                    result_encrypted=b"",
                    created_at=now,
                )
            return self._replay_count(subscription_id, replay.key)

    def _enabled(self, tenant: str, subscription_id: str) -> SubscriptionRow:
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
        return sub

    def _replay_count(self, subscription_id: str, key: str) -> int:
        return int(
            DeliveryRow.select()
            .where((DeliveryRow.subscription == subscription_id) & (DeliveryRow.replay == key))
            .count()
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
        return jobs_for(self._db, [delivery_id], Trigger.TEST)[0]


def _view(row: DeliveryRow, attempts: tuple[AttemptRecord, ...] = ()) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        subscription_id=row.subscription_id,
        event_id=row.event.event_id,
        event_type=row.event_type,
        status=DeliveryStatus(row.status),
        attempt_count=row.attempt_count,
        last_http_status=row.last_http_status,
        last_latency_ms=row.last_latency_ms if row.attempt_count else None,
        create_time=row.created_at,
        last_attempt_time=row.last_attempt_at,
        next_attempt_time=row.next_attempt_at if row.status == DeliveryStatus.PENDING else None,
        test=row.test,
        attempts=attempts,
        ordering_key=row.ordering_key,
        holds_key=bool(row.holds_key) and row.status == DeliveryStatus.FAILED,
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
