"""What the API asks of deliveries: pages and single deliveries with their attempts, manual
retry and recovery, test deliveries, and the pending count."""

from datetime import datetime, timedelta

import peewee as pw

from service.domain.clock import utcnow
from service.domain.ids import new_id
from service.domain.models import Event
from service.domain.outcomes import DeliveryStatus, ErrorKind, Outcome, Trigger
from service.domain.pipeline import AttemptRecord, DeliveryFilter, DeliveryView, Job
from service.errors import FailedPrecondition, NotFound
from service.store.delivery_rows import jobs_for
from service.store.tables import AttemptRow, DeliveryRow, EventRow, SubscriptionRow


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
        return jobs_for([delivery_id], Trigger.TEST)[0]


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
