"""Delivery rows shared by the store's modules: their ids, and the jobs they make."""

import math
from collections.abc import Sequence

import peewee as pw

from service.domain import payloads
from service.domain.models import Event
from service.domain.outcomes import Trigger
from service.domain.pipeline import Job
from service.store import bulk
from service.store.tables import EventRow

_STORED_DELIVERIES = "SELECT id FROM deliveries WHERE id IN ({})"


def stored_delivery_ids(db: pw.Database, delivery_ids: Sequence[str]) -> set[str]:
    """Those of the ids that name a stored delivery."""
    return {row[0] for row in bulk.rows_in(db, _STORED_DELIVERIES, delivery_ids)}


# Plain SQL read as tuples: building peewee models of three joined rows cost ~13% of the
# service's CPU when the scheduler claims every delivery (the ordered bench row, py-spy).
_JOB_ROWS = (
    "SELECT d.id, d.subscription_id, d.tenant, d.attempt_count, d.test, d.manual, d.replay,"
    " d.ordering_key, e.event_id, e.type, e.tenant, e.occurred_at, e.data, e.source,"
    " e.subject, s.payload_format, s.payload_template"
    " FROM deliveries d JOIN events e ON e.id = d.event_id"
    " JOIN subscriptions s ON s.id = d.subscription_id"
    " WHERE d.id IN ({})"
)


def jobs_for(
    db: pw.Database,
    delivery_ids: Sequence[str],
    trigger: Trigger | None = None,
    lease_until: float = math.inf,
) -> list[Job]:
    """The jobs that send the deliveries, their bodies built from their events."""
    jobs = []
    for row in bulk.rows_in(db, _JOB_ROWS, list(delivery_ids)):
        (delivery_id, subscription_id, tenant, attempts, test, manual, replay, key) = row[:8]
        time = bulk.read_moment(row[11])
        event = Event(row[8], row[9], row[10], time, bytes(row[12]), row[13], row[14])
        payload = payloads.stored(row[15], row[16])
        jobs.append(
            Job(
                delivery_id=delivery_id,
                subscription_id=subscription_id,
                tenant=tenant,
                event_id=event.id,
                event_type=event.type,
                body=payloads.render(payload, event, test=bool(test)),
                attempts_made=attempts,
                trigger=trigger or _trigger(bool(test), bool(manual), replay, attempts),
                test=bool(test),
                event_time=event.time,
                lease_until=lease_until,
                content_type=payload.content_type,
                ordering_key=key,
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


def _trigger(test: bool, manual: bool, replay: str, attempts: int) -> Trigger:
    if test:
        return Trigger.TEST
    if manual:
        return Trigger.MANUAL
    return Trigger.REPLAY if replay and not attempts else Trigger.SCHEDULED
