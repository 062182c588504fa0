"""The audit outbox: records waiting for the broker's ack, published and deleted in order."""

from collections.abc import Iterable, Sequence
from datetime import timedelta

import peewee as pw

from service.domain.clock import utcnow
from service.domain.pipeline import OutboxRecord
from service.store import bulk
from service.store.tables import OutboxRow

INSERT_OUTBOX = bulk.Insert(
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
# Longer than any publish takes; a crashed publisher's rows go to another after it.
OUTBOX_CLAIM = timedelta(seconds=30)


class OutboxStore:
    """Every method is synchronous and runs on a store thread."""

    def __init__(self, db: pw.Database) -> None:
        self._db = db

    def batch(self, limit: int) -> list[OutboxRecord]:
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

    def delete(self, ids: Sequence[int]) -> None:
        bulk.execute_in(self._db, "DELETE FROM outbox WHERE id IN ({})", ids)

    def release(self, ids: Sequence[int]) -> None:
        """Gives claimed records back after a failed publish, for the next try of anyone."""
        if self._db.for_update:
            bulk.execute_in(self._db, _RELEASE_OUTBOX, ids)

    def size(self) -> int:
        return int(OutboxRow.select().count())
