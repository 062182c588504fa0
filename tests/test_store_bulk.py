"""The store's batch statements on SQLite and PostgreSQL: bulk.update_rows and
bulk.insert_returning."""

from datetime import datetime

import peewee as pw

from service.store import bulk
from service.store.database import open_database
from service.store.migrations import migrate

COLUMNS = (
    ("name", "text"),
    ("rate_limit_per_second", "integer"),
    ("last_delivery_at", "timestamp"),
)


def _subscription(db: pw.Database, sub_id: str) -> None:
    db.execute_sql(  # type: ignore[no-untyped-call]
        bulk.sql(
            db,
            "INSERT INTO subscriptions (id, tenant, name, url, description, event_types,"
            " enabled, headers_encrypted, rate_limit_per_second, disabled_reason, created_by,"
            " created_at, updated_at, last_delivery_status, granted_scopes)"
            " VALUES (?, 't', ?, 'https://x.example', '', '[]', TRUE, NULL, 0, 0, 'p', ?, ?, 0,"
            " '[]')",
        ),
        (sub_id, sub_id, datetime(2026, 1, 1), datetime(2026, 1, 1)),
    )


def test_update_rows_sets_each_rows_columns_the_last_row_of_an_id_winning(
    database_url: str,
) -> None:
    db = open_database(database_url)
    db.connect()
    try:
        migrate(db)
        for sub_id in ("a", "b", "c"):
            _subscription(db, sub_id)
        later = datetime(2026, 5, 6, 7, 8, 9, 123456)
        postgres = isinstance(db, pw.PostgresqlDatabase)
        with db.atomic():
            found = bulk.update_rows(
                db,
                "subscriptions",
                COLUMNS,
                [
                    ("first", 5, later, "a"),
                    ("bee", 7, None, "b"),
                    ("second", 6, later, "a"),
                    ("gone", 1, None, "missing"),
                ],
                also="description = 'changed'",
            )
            # PostgreSQL says which ids it found (record_attempts skips deleted deliveries
            # by it); SQLite leaves that to a lookup.
            assert found == ({"a", "b"} if postgres else None)
            assert bulk.update_rows(db, "subscriptions", COLUMNS, []) == (
                set() if postgres else None
            )
        rows = db.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT id, name, rate_limit_per_second, last_delivery_at, description"
            " FROM subscriptions ORDER BY id"
        ).fetchall()
        stored = [(i, n, r, str(u) if u is not None else None, d) for i, n, r, u, d in rows]
        assert stored == [
            ("a", "second", 6, str(later), "changed"),
            ("b", "bee", 7, None, "changed"),
            ("c", "c", 0, None, ""),
        ]
    finally:
        db.close()


def test_insert_returning_gives_the_rows_it_inserted_on_postgres(database_url: str) -> None:
    db = open_database(database_url)
    db.connect()
    try:
        migrate(db)
        statement = (
            "INSERT INTO event_types (name, description, required_scope, json_schema,"
            " example_json, created_at, updated_at) VALUES (?, ?, '', '', '', ?, ?)"
            " ON CONFLICT DO NOTHING"
        )
        now = datetime(2026, 1, 1)
        with db.atomic():
            bulk.execute_many(db, statement, [("old", "first", now, now)])
            returned = bulk.insert_returning(
                db,
                statement,
                [("new", "x", now, now), ("old", "second", now, now), ("newer", "y", now, now)],
                "name, description",
            )
        if isinstance(db, pw.PostgresqlDatabase):
            assert sorted(returned or []) == [("new", "x"), ("newer", "y")]  # not the conflict
            assert bulk.insert_returning(db, statement, [], "name") == []
        else:
            assert returned is None  # the caller looks its rows up instead
        rows = db.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT name, description FROM event_types ORDER BY name"
        ).fetchall()
        expected = [("new", "x"), ("newer", "y"), ("old", "first")]
        assert [tuple(r) for r in rows] == (
            expected if isinstance(db, pw.PostgresqlDatabase) else [("old", "first")]
        )
    finally:
        db.close()
