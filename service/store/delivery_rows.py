"""Delivery rows shared by the store's modules: their ids, and the jobs they make."""

import math
from collections.abc import Sequence

import peewee as pw

from service.domain import payloads
from service.domain.models import Event
from service.domain.outcomes import Trigger
from service.domain.pipeline import Job
from service.store import bulk
from service.store.tables import DeliveryRow, EventRow, SubscriptionRow

_STORED_DELIVERIES = "SELECT id FROM deliveries WHERE id IN ({})"


def stored_delivery_ids(db: pw.Database, delivery_ids: Sequence[str]) -> set[str]:
    """Those of the ids that name a stored delivery."""
    return {row[0] for row in bulk.rows_in(db, _STORED_DELIVERIES, delivery_ids)}


def jobs_for(
    delivery_ids: Sequence[str], trigger: Trigger | None = None, lease_until: float = math.inf
) -> list[Job]:
    """The jobs that send the deliveries, their bodies built from their events."""
    rows = (
        DeliveryRow.select(
            DeliveryRow,
            EventRow,
            SubscriptionRow.id,  # else peewee's joined instance hides the row's subscription id
            SubscriptionRow.payload_format,
            SubscriptionRow.payload_template,
        )
        .join(EventRow)
        .switch(DeliveryRow)
        .join(SubscriptionRow)
        .where(DeliveryRow.id.in_(list(delivery_ids)))
    )
    jobs = []
    for row in rows:
        event = row.event
        payload = payloads.stored(
            row.subscription.payload_format, row.subscription.payload_template
        )
        stored_event = event_of(event)
        jobs.append(
            Job(
                delivery_id=row.id,
                subscription_id=row.subscription_id,
                tenant=row.tenant,
                event_id=event.event_id,
                event_type=event.type,
                body=payloads.render(payload, stored_event, test=row.test),
                attempts_made=row.attempt_count,
                trigger=trigger or _trigger(row),
                test=row.test,
                event_time=event.occurred_at,
                lease_until=lease_until,
                content_type=payload.content_type,
                ordering_key=row.ordering_key,
            )
        )
    return jobs


def event_of(row: EventRow) -> Event:
    """The stored event as ingest saw it (without its Kafka record time)."""
    return Event(
        row.event_id,
        row.type,
        row.tenant,
        row.occurred_at,
        bytes(row.data),
        row.source,
        row.subject,
    )


def _trigger(row: DeliveryRow) -> Trigger:
    if row.test:
        return Trigger.TEST
    if row.manual:
        return Trigger.MANUAL
    return Trigger.REPLAY if row.replay and not row.attempt_count else Trigger.SCHEDULED
