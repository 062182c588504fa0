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

from service.domain.models import Ordering
from service.domain.outcomes import DeliveryStatus
from service.store import bulk
from service.store.tables import DeliveryRow, SubscriptionRow

_PENDING = int(DeliveryStatus.PENDING)
# Written as literals, not parameters, so that the partial indexes deliveries_ordered_pending
# and deliveries_held match these terms (a parameter proves nothing to either planner).
_NO_KEY = pw.SQL("''")
_PENDING_SQL = pw.SQL(str(_PENDING))


def _pending(row: Any) -> pw.Expression:
    expression: pw.Expression = (row.ordering_key != _NO_KEY) & (row.status == _PENDING_SQL)
    return expression


def _earlier(state: Any, row: Any) -> pw.ColumnBase:
    """EXISTS an earlier delivery of the (DeliveryRow's) key in `state` (on `row`)."""
    found = row.select(pw.SQL("1")).where(
        state
        & (row.subscription == DeliveryRow.subscription)
        & (row.ordering_key == DeliveryRow.ordering_key)
        & (row.event < DeliveryRow.event)
    )
    exists: pw.ColumnBase = pw.fn.EXISTS(found)
    return exists


def turn_taken() -> pw.Expression:
    """True of an ordered delivery (DeliveryRow) with an earlier one of its key pending
    (being sent, or waiting for a retry) or holding the key."""
    pending, held = DeliveryRow.alias("earlier_pending"), DeliveryRow.alias("earlier_held")
    expression: pw.Expression = (DeliveryRow.ordering_key != _NO_KEY) & (
        _earlier(_pending(pending), pending) | _earlier(held.holds_key, held)
    )
    return expression


def keys_waiting(pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of the (subscription, key) pairs that have a pending or held delivery."""
    wanted = set(pairs)
    if not wanted:
        return set()
    found: set[tuple[str, str]] = set()
    for state in (_pending(DeliveryRow), DeliveryRow.holds_key):
        rows = (
            DeliveryRow.select(DeliveryRow.subscription, DeliveryRow.ordering_key)
            .where(
                state
                & DeliveryRow.subscription.in_(list({s for s, _ in wanted}))
                & DeliveryRow.ordering_key.in_(list({k for _, k in wanted}))
            )
            .distinct()
        )
        found.update((row.subscription_id, row.ordering_key) for row in rows)
    return found & wanted


def hold_keys(delivery_ids: Sequence[str]) -> None:
    """FAILED ordered deliveries of ORDERING_PER_KEY_HOLD subscriptions hold their keys."""
    if not delivery_ids:
        return
    holding = SubscriptionRow.select(SubscriptionRow.id).where(
        SubscriptionRow.ordering == int(Ordering.PER_KEY_HOLD)
    )
    DeliveryRow.update(holds_key=True).where(
        DeliveryRow.id.in_(list(delivery_ids))
        & (DeliveryRow.ordering_key != "")
        & (DeliveryRow.status == int(DeliveryStatus.FAILED))
        & DeliveryRow.subscription.in_(holding)
    ).execute()


# The next pending delivery of each finished one's key, made due; one statement per batch
# (a peewee update per delivery cost ~40% of the service's CPU in the ordered bench).
_NEXT_TURN = (
    "UPDATE deliveries SET next_attempt_at = ? WHERE next_attempt_at > ? AND id IN ("
    " SELECT (SELECT n.id FROM deliveries n"
    "  WHERE n.ordering_key <> '' AND n.status = 1 AND n.subscription_id = d.subscription_id"
    "  AND n.ordering_key = d.ordering_key AND n.event_id > d.event_id"
    "  ORDER BY n.event_id LIMIT 1)"
    " FROM deliveries d"
    " WHERE d.ordering_key <> '' AND d.status <> ? AND NOT d.holds_key"
    " AND d.id IN ({}))"
)


def next_turn(db: pw.Database, delivery_ids: Sequence[str], now: datetime) -> None:
    """After these ordered deliveries finished (or let their key go), the next pending one
    of each key is due now; a held key stays held."""
    if delivery_ids:
        when = bulk.moment(db, now)
        params = (when, when, _PENDING)
        bulk.execute_in(db, _NEXT_TURN, list(delivery_ids), *params)


def park_waiting(now: datetime, until: datetime) -> None:
    """Due ordered deliveries whose turn has not come wait until `until` (or their turn)."""
    DeliveryRow.update(next_attempt_at=until).where(
        (DeliveryRow.status == _PENDING) & (DeliveryRow.next_attempt_at <= now) & turn_taken()
    ).execute()
