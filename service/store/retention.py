"""Retention: deletes finished delivery history, events and replay records past their age,
and the subscription change log's rows every instance has read."""

from datetime import datetime

import peewee as pw

from service.domain.outcomes import DeliveryStatus
from service.store import changes
from service.store.tables import AttemptRow, DeliveryRow, EventRow, IdempotencyRow


def prune_batch(
    db: pw.Database, before: datetime, replay_before: datetime, limit: int
) -> dict[str, int]:
    """One bounded transaction of pruning; callers repeat until it deletes nothing, so the
    database is never locked for long. Pending deliveries are kept whatever their age (they
    are still owed), and an event goes only once none of its deliveries is left."""
    with db.atomic():
        delivery_ids = [
            row.id
            for row in DeliveryRow.select(DeliveryRow.id)
            .where(
                (DeliveryRow.created_at < before)
                & (DeliveryRow.status != int(DeliveryStatus.PENDING))
            )
            .limit(limit)
        ]
        attempts = deliveries = 0
        if delivery_ids:
            attempts = AttemptRow.delete().where(AttemptRow.delivery.in_(delivery_ids)).execute()
            deliveries = DeliveryRow.delete().where(DeliveryRow.id.in_(delivery_ids)).execute()
        orphan = DeliveryRow.select(DeliveryRow.id).where(DeliveryRow.event == EventRow.id)
        event_ids = [
            row.id
            for row in EventRow.select(EventRow.id)
            .where((EventRow.received_at < before) & ~pw.fn.EXISTS(orphan))
            .limit(limit)
        ]
        events = EventRow.delete().where(EventRow.id.in_(event_ids)).execute() if event_ids else 0
        # Few rows (one per Create with a request_id), so no batching needed.
        replays = IdempotencyRow.delete().where(IdempotencyRow.created_at < replay_before).execute()
        changes_read = changes.prune(db)
    return {
        "attempts": attempts,
        "deliveries": deliveries,
        "events": events,
        "idempotency_keys": replays,
        "subscription_changes": changes_read,
    }
