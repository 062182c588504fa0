"""Seeds the store with old history and future retries, straight through the database
driver (a million rows through the ORM would take longer than the benchmark itself)."""

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg

from tests.bench.e2e import LAYOUT

EVENT_COLUMNS = "tenant, event_id, type, source, subject, occurred_at, received_at, data"
DELIVERY_COLUMNS = (
    "id, tenant, subscription_id, event_id, event_type, status, attempt_count, "
    "last_http_status, test, manual, created_at, last_attempt_at, next_attempt_at"
)
PENDING, SUCCEEDED = 1, 2


def _rows(
    subscriptions: list[tuple[str, str]], old: int, pending: int, first_event_pk: int
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    now = datetime.now(UTC).replace(tzinfo=None)
    long_ago, later = now - timedelta(days=3), now + timedelta(days=1)
    events: list[tuple[object, ...]] = []
    deliveries: list[tuple[object, ...]] = []
    per_event = 10
    for n in range((old + pending + per_event - 1) // per_event):
        tenant = subscriptions[n % len(subscriptions)][1]
        events.append(
            (
                tenant,
                f"seed-{uuid.uuid4()}",
                "person.created",
                "seed",
                "",
                long_ago,
                long_ago,
                b"{}",
            )
        )
    for n in range(old + pending):
        subscription_id, tenant = subscriptions[n % len(subscriptions)]
        is_old = n < old
        deliveries.append(
            (
                f"msg_seed{n:012d}",
                tenant,
                subscription_id,
                first_event_pk + n // per_event,
                "person.created",
                SUCCEEDED if is_old else PENDING,
                1,
                200 if is_old else 503,
                False,
                False,
                long_ago,
                long_ago,
                None if is_old else later,  # pending retries, due after the run
            )
        )
    return events, deliveries


def seed(database_url: str, old: int, pending: int) -> None:
    if database_url.startswith("sqlite:///"):
        _seed_sqlite(database_url.removeprefix("sqlite:///"), old, pending)
    else:
        _seed_postgres(database_url, old, pending)


def _seed_sqlite(path: str, old: int, pending: int) -> None:
    db = sqlite3.connect(path)
    try:
        subscriptions = db.execute("SELECT id, tenant FROM subscriptions").fetchall()
        assert len(subscriptions) == sum(len(s) for s in LAYOUT.values())
        first = (db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]) + 1
        events, deliveries = _rows(subscriptions, old, pending, first)
        with db:
            db.executemany(
                f"INSERT INTO events (id, {EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(first + i, *row) for i, row in enumerate(events)],
            )
            db.executemany(
                f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                deliveries,
            )
    finally:
        db.close()


def _seed_postgres(url: str, old: int, pending: int) -> None:
    parts = urlsplit(url)
    options = unquote(parts.query.removeprefix("options="))
    db = psycopg.connect(url.split("?")[0], options=options)
    try:
        with db, db.cursor() as cur:
            cur.execute("SELECT id, tenant FROM subscriptions")
            subscriptions = cur.fetchall()
            cur.execute("SELECT COALESCE(MAX(id), 0) FROM events")
            (last,) = cur.fetchone() or (0,)
            first = last + 1
            events, deliveries = _rows(subscriptions, old, pending, first)
            _copy(
                cur,
                "events",
                f"id, {EVENT_COLUMNS}",
                [(first + i, *r) for i, r in enumerate(events)],
            )
            _copy(cur, "deliveries", DELIVERY_COLUMNS, deliveries)
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('events', 'id'), %s)", (first + len(events),)
            )
            cur.execute("ANALYZE")
    finally:
        db.close()


def _copy(
    cur: psycopg.Cursor[Any], table: str, columns: str, rows: list[tuple[object, ...]]
) -> None:
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
