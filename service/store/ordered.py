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


def next_turn(delivery_ids: Sequence[str], now: datetime) -> None:
    """After these ordered deliveries finished (or let their key go), the next pending one
    of each key is due now."""
    if not delivery_ids:
        return
    finished = DeliveryRow.select(
        DeliveryRow.subscription, DeliveryRow.ordering_key, DeliveryRow.event
    ).where(
        DeliveryRow.id.in_(list(delivery_ids))
        & (DeliveryRow.ordering_key != "")
        & ~waiting()  # a held key stays held
    )
    for row in finished:
        following = (
            DeliveryRow.select(DeliveryRow.id)
            .where(
                (DeliveryRow.subscription == row.subscription_id)
                & (DeliveryRow.ordering_key != "")
                & (DeliveryRow.ordering_key == row.ordering_key)
                & (DeliveryRow.event > row.event_id)
                & (DeliveryRow.status == _PENDING)
            )
            .order_by(DeliveryRow.event)
            .limit(1)
        )
        DeliveryRow.update(next_attempt_at=now).where(
            DeliveryRow.id.in_(following) & (DeliveryRow.next_attempt_at > now)
        ).execute()


def park_waiting(now: datetime, until: datetime) -> None:
    """Due ordered deliveries whose turn has not come wait until `until` (or their turn)."""
    DeliveryRow.update(next_attempt_at=until).where(
        (DeliveryRow.status == _PENDING) & (DeliveryRow.next_attempt_at <= now) & turn_taken()
    ).execute()
