"""The subscription change log: each transaction that changes what the delivery engine caches
of a subscription (where and how it is sent, whether it is enabled, which events it takes)
adds a row, and every instance reads the rows added since it last looked.

Ids come from a sequence, but on PostgreSQL a transaction may commit after one that took a
later id: an id skipped by a read is looked for again (a gap) until GAP_SECONDS have passed,
after which its transaction rolled back (sequences do not reuse ids)."""

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import peewee as pw

from service.domain.clock import utcnow
from service.store import bulk
from service.store.tables import SubscriptionChangeRow as Change

GAP_SECONDS = 30.0
# Rows older than this are deleted by retention: every instance has read them long since.
KEEP = timedelta(hours=1)

_INSERT = bulk.Insert(
    "subscription_changes",
    (("subscription_id", "text"), ("tenant", "text"), ("changed_at", "timestamp")),
)


def record(db: pw.Database, changed: Iterable[tuple[str, str]]) -> None:
    """Adds a row per (subscription id, tenant), in the caller's transaction."""
    now = bulk.moment(db, utcnow())
    bulk.insert(db, _INSERT, [(sid, tenant, now) for sid, tenant in changed])


def prune(db: pw.Database) -> int:
    """Deletes rows older than KEEP but the newest: on SQLite a new row's id is the highest
    plus one, so ids only grow: after all were pruned, a reused id would be below every
    reader's cursor and its change never seen."""
    newest = Change.select(pw.fn.MAX(Change.id))
    old = (Change.changed_at < utcnow() - KEEP) & (Change.id < newest)
    return int(Change.delete().where(old).execute())


@dataclass
class ChangeCursor:
    """Where an instance's reading of the log is: the highest id read, and ids below it not
    seen yet (with when they were first missed)."""

    last: int = -1  # -1: not started, the first read only finds where the log ends
    gaps: dict[int, float] = field(default_factory=dict)


def read_changes(db: pw.Database, cursor: ChangeCursor) -> set[tuple[str, str]]:
    """The (subscription id, tenant) pairs changed since the cursor's last read; moves it."""
    if cursor.last < 0:
        top = Change.select(pw.fn.MAX(Change.id)).scalar()
        cursor.last = int(top or 0)
        return set()
    condition = Change.id > cursor.last
    if cursor.gaps:
        condition |= Change.id.in_(list(cursor.gaps))
    query = Change.select(Change.id, Change.subscription_id, Change.tenant).where(condition)
    rows: list[tuple[int, str, str]] = list(query.tuples())  # type: ignore[arg-type]
    now = time.monotonic()
    seen = {row[0] for row in rows}
    top = max(seen, default=cursor.last)
    # Bounded: a burst of rolled-back transactions must not make every read a long IN list.
    for missing in range(max(cursor.last + 1, top - 1000), top):
        if missing not in seen:
            cursor.gaps[missing] = now
    for found in seen:
        cursor.gaps.pop(found, None)
    cursor.gaps = {i: t for i, t in cursor.gaps.items() if now - t < GAP_SECONDS}
    cursor.last = max(cursor.last, top)
    return {(row[1], row[2]) for row in rows}
