"""Hot-path writes as plain SQL: building each statement through the ORM cost more CPU than
the HTTP request it records (see README "Benchmark")."""

import re
from collections.abc import Iterator, Sequence
from typing import Any

import peewee as pw
from psycopg2.extras import execute_batch, execute_values

_VALUES = re.compile(r" VALUES (\([^)]*\))")


def execute_many(db: pw.Database, sql: str, rows: Sequence[Sequence[object]]) -> int:
    """Runs `sql` (with `?` placeholders) for every row in the current transaction; returns
    how many rows it changed."""
    if not rows:
        return 0
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    if not isinstance(db, pw.PostgresqlDatabase):
        cursor.executemany(sql, rows)
        return int(cursor.rowcount)
    multi_row = _multi_row(sql)
    if multi_row is None:
        # psycopg2's executemany is one round trip per row; execute_batch sends pages.
        execute_batch(cursor, sql.replace("?", "%s"), rows, page_size=500)
        return len(rows)
    # One multi-row INSERT, so the row count covers the whole batch.
    statement, template = multi_row
    execute_values(cursor, statement, rows, template=template, page_size=len(rows))
    return int(cursor.rowcount)


def insert_returning(
    db: pw.Database, sql: str, rows: Sequence[Sequence[object]], returning: str
) -> list[tuple[Any, ...]] | None:
    """On PostgreSQL, runs the INSERT `sql` (with `?` placeholders and one VALUES row) for
    every row as one statement and returns `returning` of each row it inserted; None on
    SQLite, where the caller looks the rows up instead. Looking the new rows' keys up with a
    second statement cost PostgreSQL ~40 us of CPU per delivery (README "Benchmark")."""
    if not isinstance(db, pw.PostgresqlDatabase):
        return None
    if not rows:
        return []
    multi_row = _multi_row(sql)
    assert multi_row is not None, sql
    statement, template = multi_row
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    return list(
        execute_values(
            cursor,
            f"{statement} RETURNING {returning}",
            rows,
            template=template,
            page_size=len(rows),
            fetch=True,
        )
    )


def _multi_row(sql: str) -> tuple[str, str] | None:
    """A one-row `INSERT ... VALUES (?, ...)` (with `?` placeholders) as psycopg2's
    execute_values wants it: the statement with `VALUES %s`, and the row's template; None
    for a statement without VALUES."""
    sql = sql.replace("?", "%s")
    values = _VALUES.search(sql)
    if values is None:
        return None
    return sql[: values.start()] + " VALUES %s" + sql[values.end() :], values.group(1)


def update_rows(
    db: pw.Database,
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[object]],
    *,
    also: str = "",
) -> set[Any] | None:
    """Sets `columns` (name, PostgreSQL type) of the rows whose `id` is each row's last
    value; `also` is a constant assignment added to every row. When an id repeats, its
    last row wins. PostgreSQL gets one UPDATE ... FROM (VALUES ...) for the batch: sent as
    one statement per row (execute_batch), the server parsed and planned each, ~50 us more
    of its CPU per row (README "Benchmark"). Returns the ids it found on PostgreSQL (their
    rows now locked until the transaction ends), None on SQLite."""
    if not rows:
        return set() if isinstance(db, pw.PostgresqlDatabase) else None
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    extra = f", {also}" if also else ""
    if not isinstance(db, pw.PostgresqlDatabase):
        assignments = ", ".join(f"{name} = ?" for name, _ in columns)
        statement = f"UPDATE {table} SET {assignments}{extra} WHERE id = ?"  # noqa: S608
        cursor.executemany(statement, rows)
        return None
    last = list({row[-1]: row for row in rows}.values())
    assignments = ", ".join(f"{name} = v.{name}" for name, _ in columns)
    names = ", ".join(name for name, _ in columns)
    template = "(" + ", ".join(f"%s::{kind}" for _, kind in columns) + ", %s)"
    statement = (
        f"UPDATE {table} AS t SET {assignments}{extra}"  # noqa: S608 (names are constants)
        f" FROM (VALUES %s) AS v ({names}, id) WHERE t.id = v.id RETURNING t.id"
    )
    found = execute_values(
        cursor, statement, last, template=template, page_size=len(last), fetch=True
    )
    return {row[0] for row in found}


def sql(db: pw.Database, text: str) -> str:
    """`text` with its `?` placeholders in the database's own style."""
    return text.replace("?", "%s") if isinstance(db, pw.PostgresqlDatabase) else text


def rows_in(
    db: pw.Database, text: str, values: Sequence[object], *params: object
) -> Iterator[tuple[Any, ...]]:
    """The rows of `text`: `params` fill its first placeholders, `values` its last
    `IN ({})`, in chunks of 500 (one statement each)."""
    for part in _chunks(values):
        yield from _execute_in(db, text, part, params).fetchall()


def execute_in(db: pw.Database, text: str, values: Sequence[object], *params: object) -> int:
    """Runs `text` as `rows_in` does; returns how many rows it changed."""
    return sum(int(_execute_in(db, text, part, params).rowcount) for part in _chunks(values))


def _execute_in(
    db: pw.Database, text: str, part: Sequence[object], params: Sequence[object]
) -> Any:
    statement = sql(db, text.format(", ".join("?" * len(part))))
    return db.execute_sql(statement, (*params, *part))  # type: ignore[no-untyped-call]


def _chunks(values: Sequence[object]) -> Iterator[Sequence[object]]:
    for start in range(0, len(values), 500):
        yield values[start : start + 500]
