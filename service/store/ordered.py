"""The store's side of ordered delivery: whose turn it is in each (subscription, key).

The rule (claim_due): an ordered delivery is sent only when no earlier one of its key, by
event row, is pending or holds the key. So that the claim does not scan every waiting
delivery, a delivery that is not its key's head is parked: its next attempt time is moved a
lease ahead. When a head finishes, the next one is made due at once; a park that ends while
its turn has not come is renewed. A park missed in a race (a head finishing in another
transaction while this one parks its successor) ends with its lease: a delay, never a
delivery out of turn, which the rule itself prevents."""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import peewee as pw

from service.domain.outcomes import DeliveryStatus
from service.store import bulk
from service.store.tables import DeliveryRow

_PENDING = int(DeliveryStatus.PENDING)
_FAILED = int(DeliveryStatus.FAILED)


def waiting(row: Any = DeliveryRow) -> pw.Expression:
    """Deliveries that keep later ones of their key waiting."""
    expression: pw.Expression = (row.status == _PENDING) | ((row.status == _FAILED) & row.holds_key)
    return expression


def turn_taken() -> pw.Expression:
    """True of an ordered delivery (DeliveryRow) with an earlier one of its key waiting."""
    earlier = DeliveryRow.alias("earlier")
    blocking = earlier.select(pw.SQL("1")).where(
        (earlier.subscription == DeliveryRow.subscription)
        # Stated, so the partial index deliveries_ordering is the one used.
        & (earlier.ordering_key != "")
        & (earlier.ordering_key == DeliveryRow.ordering_key)
        & (earlier.event < DeliveryRow.event)
        & waiting(earlier)
    )
    return (DeliveryRow.ordering_key != "") & pw.fn.EXISTS(blocking)


def keys_waiting(pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of the (subscription, key) pairs that have a waiting delivery."""
    wanted = set(pairs)
    if not wanted:
        return set()
    rows = (
        DeliveryRow.select(DeliveryRow.subscription, DeliveryRow.ordering_key)
        .where(
            DeliveryRow.subscription.in_(list({s for s, _ in wanted}))
            & (DeliveryRow.ordering_key != "")
            & DeliveryRow.ordering_key.in_(list({k for _, k in wanted}))
            & waiting()
        )
        .distinct()
    )
    return {(row.subscription_id, row.ordering_key) for row in rows} & wanted


# The next pending delivery of each finished one's key, made due; one statement per batch
# (a peewee update per delivery cost ~40% of the service's CPU in the ordered bench).
_NEXT_TURN = (
    "UPDATE deliveries SET next_attempt_at = ? WHERE next_attempt_at > ? AND id IN ("
    " SELECT (SELECT n.id FROM deliveries n"
    "  WHERE n.subscription_id = d.subscription_id AND n.ordering_key <> ''"
    "  AND n.ordering_key = d.ordering_key AND n.event_id > d.event_id AND n.status = ?"
    "  ORDER BY n.event_id LIMIT 1)"
    " FROM deliveries d"
    " WHERE d.ordering_key <> '' AND d.status <> ? AND NOT (d.status = ? AND d.holds_key)"
    " AND d.id IN ({}))"
)


def next_turn(db: pw.Database, delivery_ids: Sequence[str], now: datetime) -> None:
    """After these ordered deliveries finished (or let their key go), the next pending one
    of each key is due now; a held key stays held."""
    if delivery_ids:
        when = bulk.moment(db, now)
        params = (when, when, _PENDING, _PENDING, _FAILED)
        bulk.execute_in(db, _NEXT_TURN, list(delivery_ids), *params)


def park_waiting(now: datetime, until: datetime) -> None:
    """Due ordered deliveries whose turn has not come wait until `until` (or their turn)."""
    DeliveryRow.update(next_attempt_at=until).where(
        (DeliveryRow.status == _PENDING) & (DeliveryRow.next_attempt_at <= now) & turn_taken()
    ).execute()
