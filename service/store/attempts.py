"""What the delivery engine writes: claims of due deliveries, attempts and their outcomes
(with their audit records' outbox rows), deferrals; and the targets it sends to."""

import json
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta

import peewee as pw

from service.crypto import SecretBox
from service.domain.clock import unix_time, utcnow
from service.domain.outcomes import DeliveryStatus, Outcome
from service.domain.pipeline import AttemptRecord, Job, RecordedAttempt, Target
from service.domain.signing import secret_key
from service.domain.subscription_marks import Mark, marks_of
from service.store import bulk, changes, ordered
from service.store.delivery_rows import jobs_for, stored_delivery_ids
from service.store.outbox import INSERT_OUTBOX
from service.store.subscriptions import live_secrets
from service.store.tables import DeliveryRow, SubscriptionRow

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
    ("last_latency_ms", "integer"),
    ("last_attempt_at", "timestamp"),
    ("next_attempt_at", "timestamp"),
)
# Cleared (its last attempt succeeded), or failing since the given time, or since whenever
# it started failing (now if it was not): service.domain.subscription_marks.
_UPDATE_SUBSCRIPTION = (
    "UPDATE subscriptions SET last_delivery_at = ?, last_delivery_status = ?,"
    " failing_since = CASE WHEN ? THEN NULL ELSE COALESCE(?, failing_since, ?) END WHERE id = ?"
)
_DISABLE_SUBSCRIPTION = "UPDATE subscriptions SET enabled = FALSE, disabled_reason = ? WHERE id = ?"
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


PARK_CHECK_SECONDS = 1.0


class AttemptStore:
    """Every method is synchronous and runs on a store thread."""

    def __init__(self, db: pw.Database, box: SecretBox) -> None:
        self._db = db
        self._box = box
        self._parks_renewed = 0.0  # monotonic time of the last park_waiting

    def stored(self, delivery_ids: Sequence[str]) -> set[str]:
        """Those of the ids that name a stored delivery."""
        return stored_delivery_ids(self._db, delivery_ids)

    def claim_due(self, limit: int, lease: timedelta) -> list[Job]:
        """Takes up to `limit` due deliveries, leasing them so no other claimer takes them too.
        An ordered delivery is taken only when no earlier one of its key is pending (being
        sent, or waiting for a retry) or holds the key: one per key at a time, in order
        (service.store.ordered)."""
        now = utcnow()
        with self._db.atomic():
            # Parks end a lease after they began: renewing them more often than every
            # PARK_CHECK_SECONDS finds nothing new, and it probes every due delivery.
            if time.monotonic() - self._parks_renewed > PARK_CHECK_SECONDS:
                self._parks_renewed = time.monotonic()
                ordered.park_waiting(now, now + lease)
            query = (
                DeliveryRow.select(DeliveryRow.id)
                .where(
                    (DeliveryRow.status == int(DeliveryStatus.PENDING))
                    & (DeliveryRow.next_attempt_at <= now)
                    & ~ordered.turn_taken()
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
            return jobs_for(self._db, ids, lease_until=unix_time(now + lease))

    def targets(self, subscription_ids: Iterable[str]) -> dict[str, Target]:
        """Where and how to send, with the live secrets decrypted; absent ids were deleted."""
        ids = list(set(subscription_ids))
        if not ids:
            return {}
        secrets = live_secrets(self._db, ids)
        out = {}
        for row in SubscriptionRow.select().where(SubscriptionRow.id.in_(ids)):
            live = secrets.get(row.id, ())
            expiries = [bulk.read_moment(s.expires_at) for s in live if s.expires_at is not None]
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
                secret_keys=tuple(secret_key(self._box.decrypt(s.secret_encrypted)) for s in live),
                rate_limit_per_second=row.rate_limit_per_second,
                enabled=row.enabled,
                failing_since=row.failing_since,
                secrets_change_at=min(expiries, default=None),
            )
        return out

    def record_attempts(
        self,
        items: Sequence[RecordedAttempt],
        *,
        audited: Collection[str] = (),
        marks: Sequence[Mark] | None = None,
    ) -> None:
        """Stores attempts, moves their deliveries on, updates the subscriptions (with
        `marks`, those; else each one's from the batch) and queues the audit records in the
        outbox (but those of the attempt ids in `audited`, which the broker acked already),
        all in one transaction (deliveries deleted meanwhile are skipped)."""
        if not items:
            if marks:
                self.write_marks(marks)
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
                        i.attempt.latency_ms,
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
                else stored_delivery_ids(self._db, list({i.attempt.delivery_id for i in items}))
            )
            live = [i for i in items if i.attempt.delivery_id in alive]
            ordered.hold_keys(
                [
                    i.attempt.delivery_id
                    for i in live
                    if i.ordered and i.attempt.outcome == Outcome.FAILED
                ]
            )
            ordered.next_turn(
                db,
                [
                    i.attempt.delivery_id
                    for i in live
                    if i.ordered and i.attempt.outcome != Outcome.RETRY_SCHEDULED
                ],
                now,
            )
            bulk.insert(db, _INSERT_ATTEMPT, [_attempt_row(i.attempt) for i in live])
            self._update_subscriptions(marks_of(live, now) if marks is None else marks)
            bulk.insert(
                db,
                INSERT_OUTBOX,
                [
                    (i.audit_topic, i.audit_key, i.audit_value, stamp)
                    for i in live
                    if i.attempt.attempt_id not in audited
                ],
            )

    def write_marks(self, marks: Sequence[Mark]) -> None:
        """Updates each mark's subscription, in a transaction of its own."""
        with self._db.atomic():
            self._update_subscriptions(marks)

    def _update_subscriptions(self, marks: Sequence[Mark]) -> None:
        """write_marks in the caller's transaction (record_attempts': no savepoint per batch)."""
        updates = [
            (m.at, m.status, m.cleared, m.failing_since, m.at, m.subscription_id) for m in marks
        ]
        bulk.execute_many(self._db, _UPDATE_SUBSCRIPTION, updates)
        disabled = [m for m in marks if m.disable is not None]
        bulk.execute_many(
            self._db,
            _DISABLE_SUBSCRIPTION,
            [(int(m.disable or 0), m.subscription_id) for m in disabled],
        )
        changes.record(self._db, [(m.subscription_id, m.tenant) for m in disabled])

    def defer(self, groups: Mapping[datetime, Sequence[str]]) -> None:
        """Makes leased deliveries due at the time they are listed under, without counting an
        attempt."""
        with self._db.atomic():
            for until, delivery_ids in groups.items():
                DeliveryRow.update(next_attempt_at=until).where(
                    DeliveryRow.id.in_(list(delivery_ids))
                    & (DeliveryRow.status == int(DeliveryStatus.PENDING))
                ).execute()

    def fail_disabled(self, delivery_ids: Sequence[str]) -> None:
        """Marks deliveries to a disabled subscription FAILED (RecoverDeliveries re-queues them)."""
        if delivery_ids:
            with self._db.atomic():
                DeliveryRow.update(status=int(DeliveryStatus.FAILED), next_attempt_at=None).where(
                    DeliveryRow.id.in_(list(delivery_ids))
                    & (DeliveryRow.status == int(DeliveryStatus.PENDING))
                ).execute()
                ordered.hold_keys(delivery_ids)
                ordered.next_turn(self._db, delivery_ids, utcnow())
