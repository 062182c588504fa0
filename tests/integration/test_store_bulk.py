"""The store's batch statements on SQLite and PostgreSQL: bulk.update_rows, bulk.insert and
bulk.insert_returning."""

from collections.abc import Iterator
from datetime import datetime

import peewee as pw
import psycopg
import pytest

from service.store import bulk, tables
from service.store.database import open_database
from service.store.migrations import migrate

COLUMNS = (
    ("name", "text"),
    ("rate_limit_per_second", "integer"),
    ("last_delivery_at", "timestamp"),
)


@pytest.fixture
def db(database_url: str) -> Iterator[pw.Database]:
    """A migrated database, connected for the test."""
    database = open_database(database_url)
    database.connect()
    try:
        migrate(database)
        yield database
    finally:
        database.close()


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
    db: pw.Database,
) -> None:
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
        assert bulk.update_rows(db, "subscriptions", COLUMNS, []) == (set() if postgres else None)
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


EVENT_TYPES = bulk.Insert(
    "event_types",
    (("name", "text"), ("description", "text"), ("created_at", "timestamp")),
    (
        ("required_scope", "'none'"),
        ("json_schema", "''"),
        ("example_json", "''"),
        ("updated_at", "'2026-02-03 04:05:06'"),
    ),
    skip_conflicts=True,
)
# Values that a quoted or array-literal form would have to escape.
AWKWARD = "quote ' double \" brace {x} comma , backslash \\ NULL é 😀"


def test_insert_stores_every_row_and_skips_conflicts(db: pw.Database) -> None:
    now = datetime(2026, 1, 1, 2, 3, 4, 567890)
    with db.atomic():
        assert bulk.insert(db, EVENT_TYPES, [("old", "first", now)]) == 1
        assert bulk.insert(db, EVENT_TYPES, []) == 0
        inserted = bulk.insert(
            db,
            EVENT_TYPES,
            [("new", AWKWARD, now), ("old", "second", now), ("", "", now)],
        )
        assert inserted == 2  # not the conflict
    rows = db.execute_sql(  # type: ignore[no-untyped-call]
        "SELECT name, description, required_scope, created_at, updated_at FROM event_types"
        " ORDER BY name"
    ).fetchall()
    assert [(n, d, s, str(c), str(u)) for n, d, s, c, u in rows] == [
        ("", "", "none", str(now), "2026-02-03 04:05:06"),
        ("new", AWKWARD, "none", str(now), "2026-02-03 04:05:06"),
        ("old", "first", "none", str(now), "2026-02-03 04:05:06"),
    ]


def test_insert_takes_nulls_bytes_and_columns_of_nulls_only(db: pw.Database) -> None:
    outbox = bulk.Insert(
        "outbox",
        (
            ("topic", "text"),
            ("key", "bytea"),
            ("value", "bytea"),
            ("created_at", "timestamp"),
            ("claimed_until", "timestamp"),
        ),
    )
    now = datetime(2026, 1, 1)
    binary = bytes(range(256))
    with db.atomic():
        count = bulk.insert(
            db, outbox, [("a", None, binary, now, None), ("b", b"k", b"", now, None)]
        )
    assert count == 2
    rows = db.execute_sql(  # type: ignore[no-untyped-call]
        "SELECT topic, key, value, claimed_until FROM outbox ORDER BY topic"
    ).fetchall()
    assert [(t, k and bytes(k), bytes(v), c) for t, k, v, c in rows] == [
        ("a", None, binary, None),
        ("b", b"k", b"", None),
    ]


def test_insert_returning_gives_the_rows_it_inserted_on_postgres(db: pw.Database) -> None:
    now = datetime(2026, 1, 1)
    with db.atomic():
        bulk.insert(db, EVENT_TYPES, [("old", "first", now)])
        returned = bulk.insert_returning(
            db,
            EVENT_TYPES,
            [("new", "x", now), ("old", "second", now), ("newer", "y", now)],
            "name, description",
        )
    if isinstance(db, pw.PostgresqlDatabase):
        assert sorted(returned or []) == [("new", "x"), ("newer", "y")]  # not the conflict
        assert bulk.insert_returning(db, EVENT_TYPES, [], "name") == []
    else:
        assert returned is None  # the caller looks its rows up instead
    rows = db.execute_sql(  # type: ignore[no-untyped-call]
        "SELECT name, description FROM event_types ORDER BY name"
    ).fetchall()
    expected = [("new", "x"), ("newer", "y"), ("old", "first")]
    assert [tuple(r) for r in rows] == (
        expected if isinstance(db, pw.PostgresqlDatabase) else [("old", "first")]
    )


def test_a_moment_is_stored_as_the_datetime_itself_would_be(db: pw.Database) -> None:
    when = datetime(2026, 3, 4, 5, 6, 7, 890123)
    with db.atomic():
        bulk.insert(db, EVENT_TYPES, [("as-is", "", when), ("moment", "", bulk.moment(db, when))])
    rows = db.execute_sql(  # type: ignore[no-untyped-call]
        "SELECT created_at FROM event_types ORDER BY name"
    ).fetchall()
    assert rows[0] == rows[1]  # the same text on SQLite, the same timestamp on PostgreSQL
    stored = tables.EventTypeRow.get(tables.EventTypeRow.name == "moment").created_at
    assert stored == when


@pytest.mark.postgres
def test_postgres_statements_are_never_prepared(postgres_url: str) -> None:
    """A prepared statement's generic plan, made while a table was nearly empty, kept a
    sequential scan for every attempt batch (README "Benchmark")."""
    db = open_database(postgres_url)
    db.connect()
    try:
        migrate(db)
        now = datetime(2026, 1, 1)
        for n in range(8):  # psycopg would prepare from the fifth run on by default
            with db.atomic():
                bulk.insert(db, EVENT_TYPES, [(f"type-{n}", "", now)])
                list(bulk.rows_in(db, "SELECT name FROM event_types WHERE name IN ({})", ["x"]))
        prepared = db.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT count(*) FROM pg_prepared_statements"
        ).fetchone()[0]
        assert prepared == 0
        connection = db.connection()  # type: ignore[no-untyped-call]
        assert isinstance(connection, psycopg.Connection)  # psycopg 3
    finally:
        db.close()


def test_driver_errors_come_out_as_peewee_errors(db: pw.Database) -> None:
    """The runner turns peewee's OperationalError into Unavailable; bulk's statements use
    the driver's cursor, so its errors must come out as peewee's too."""
    every_column = bulk.Insert(
        "event_types",
        (
            *((name, "text") for name in ("name", "description", "required_scope")),
            *((name, "text") for name in ("json_schema", "example_json")),
            ("created_at", "timestamp"),
            ("updated_at", "timestamp"),
        ),
    )
    now = datetime(2026, 1, 1)
    row = ("same", "", "", "", "", now, now)
    with pytest.raises(pw.IntegrityError), db.atomic():
        bulk.insert(db, every_column, [row, row])  # binary COPY on PostgreSQL
    missing = bulk.Insert("no_such_table", (("name", "text"),), skip_conflicts=True)
    with pytest.raises((pw.OperationalError, pw.ProgrammingError)), db.atomic():
        bulk.insert(db, missing, [("x",)])
    with pytest.raises((pw.OperationalError, pw.ProgrammingError)), db.atomic():
        bulk.update_rows(db, "no_such_table", (("name", "text"),), [("x", "id")])
