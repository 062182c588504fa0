"""The subscription change log read as each instance reads it: rows added since the last
read, an id skipped (its transaction not committed yet) found on a later read, and an id
that never comes (rolled back) given up."""

from datetime import timedelta

import peewee as pw
import pytest

from service.domain.clock import utcnow
from service.store import changes, tables
from service.store.changes import ChangeCursor, read_changes
from service.store.database import open_database
from service.store.migrations import migrate


def _row(change_id: int, subscription_id: str) -> None:
    tables.SubscriptionChangeRow.insert(
        id=change_id, subscription_id=subscription_id, tenant="t", changed_at=utcnow()
    ).execute()


def test_reads_what_changed_since_the_last_read_and_ids_committed_late(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db: pw.Database = open_database(database_url)
    db.connect()
    try:
        migrate(db)
        with db.atomic():
            changes.record(db, [("sub_before", "t")])
        cursor = ChangeCursor()
        assert read_changes(db, cursor) == set()  # the first read finds where the log ends
        assert read_changes(db, cursor) == set()
        with db.atomic():
            changes.record(db, [("sub_a", "t"), ("sub_b", "u")])
        assert read_changes(db, cursor) == {("sub_a", "t"), ("sub_b", "u")}
        assert read_changes(db, cursor) == set()

        # Ids last+1 and last+2 are taken by transactions not committed yet; last+3 is read.
        last = cursor.last
        _row(last + 3, "sub_c")
        assert read_changes(db, cursor) == {("sub_c", "t")}
        assert set(cursor.gaps) == {last + 1, last + 2}
        _row(last + 1, "sub_late")
        assert read_changes(db, cursor) == {("sub_late", "t")}
        assert set(cursor.gaps) == {last + 2}
        # The other never commits: given up after GAP_SECONDS.
        monkeypatch.setattr(changes, "GAP_SECONDS", 0.0)
        assert read_changes(db, cursor) == set()
        assert cursor.gaps == {}
    finally:
        db.close()


def test_pruning_keeps_the_newest_row_so_ids_only_grow(database_url: str) -> None:
    db: pw.Database = open_database(database_url)
    db.connect()
    try:
        migrate(db)
        old = utcnow() - changes.KEEP - timedelta(minutes=1)
        with db.atomic():
            changes.record(db, [("sub_a", "t"), ("sub_b", "t")])
        tables.SubscriptionChangeRow.update(changed_at=old).execute()
        cursor = ChangeCursor()
        read_changes(db, cursor)  # where the log ends
        assert changes.prune(db) == 1  # all old, but the newest stays
        with db.atomic():
            changes.record(db, [("sub_c", "t")])
        # Had both gone, SQLite would give this row the id of sub_b's: never read.
        assert read_changes(db, cursor) == {("sub_c", "t")}
    finally:
        db.close()
