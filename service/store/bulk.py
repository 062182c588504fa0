"""Hot-path writes as plain SQL: building each statement through the ORM cost more CPU than
the HTTP request it records."""

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import peewee as pw

from service.store.database import is_postgres

P = ParamSpec("P")
R = TypeVar("R")


def _driver_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """The driver's errors as peewee's, as peewee raises them for its own statements: these
    functions use the driver's cursor directly, and the store runner turns peewee's
    OperationalError and InterfaceError into Unavailable."""

    @functools.wraps(fn)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        with pw.__exception_wrapper__:  # type: ignore[attr-defined]
            return fn(*args, **kwargs)

    return translated


@dataclass(frozen=True)
class Insert:
    """A multi-row INSERT: each row gives `columns` (name, PostgreSQL type) in order, and
    `constants` (name, SQL literal) are the same for every row. The types must be the
    columns' own: without constants or conflicts to skip, PostgreSQL gets the rows by binary
    COPY, which converts nothing."""

    table: str
    columns: tuple[tuple[str, str], ...]
    constants: tuple[tuple[str, str], ...] = ()
    # ON CONFLICT DO NOTHING: rows that would collide are skipped, not an error.
    skip_conflicts: bool = False

    # Each statement is built once per spec (the specs are module constants): a frozen
    # dataclass takes cached_property, which writes to the instance's __dict__ directly.
    @functools.cached_property
    def _into(self) -> str:
        names = ", ".join(name for name, _ in (*self.columns, *self.constants))
        return f"INSERT INTO {self.table} ({names})"

    @functools.cached_property
    def _conflict(self) -> str:
        return " ON CONFLICT DO NOTHING" if self.skip_conflicts else ""

    @functools.cached_property
    def sqlite(self) -> str:
        values = ", ".join(["?"] * len(self.columns) + [value for _, value in self.constants])
        return f"{self._into} VALUES ({values}){self._conflict}"

    @functools.cached_property
    def postgres(self) -> str:
        """One short statement for any number of rows, each column one array parameter, the
        values in binary. As a VALUES list quoted on the client (psycopg2's
        execute_values), the client spent ~1 us per value and the server parsed every value
        of every batch: the delivery INSERT cost it 24.5 against 11 us a row (README
        "Benchmark")."""
        arrays = ", ".join(f"%b::{kind}[]" for _, kind in self.columns)
        extra = "".join(f", {value}" for _, value in self.constants)
        return f"{self._into} SELECT *{extra} FROM unnest({arrays}){self._conflict}"  # noqa: S608

    @functools.cached_property
    def copy(self) -> str:
        """Binary COPY of `columns`: for specs without constants or conflicts to skip."""
        names = ", ".join(name for name, _ in self.columns)
        return f"COPY {self.table} ({names}) FROM STDIN (FORMAT BINARY)"


@_driver_errors
def insert(db: pw.Database, spec: Insert, rows: Sequence[Sequence[object]]) -> int:
    """Inserts the rows in the current transaction; returns how many it inserted."""
    if not rows:
        return 0
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    if not is_postgres(db):
        cursor.executemany(spec.sqlite, rows)
        return int(cursor.rowcount)
    if spec.skip_conflicts or spec.constants:
        cursor.execute(spec.postgres, _arrays(rows))
        return int(cursor.rowcount)
    # COPY, binary: each row formatted in psycopg's C code, and cheaper for the server than
    # the same rows through unnest.
    with cursor.copy(spec.copy) as copy:
        copy.set_types([kind for _, kind in spec.columns])
        for row in rows:
            copy.write_row(row)
    return len(rows)


@_driver_errors
def insert_returning(
    db: pw.Database, spec: Insert, rows: Sequence[Sequence[object]], returning: str
) -> list[tuple[Any, ...]] | None:
    """On PostgreSQL, inserts the rows as `insert` does and returns `returning` of each row
    it inserted; None on SQLite, where the caller looks the rows up instead. One statement:
    a second to look the new rows' keys up costs the server more than the insert."""
    if not is_postgres(db):
        return None
    if not rows:
        return []
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    cursor.execute(f"{spec.postgres} RETURNING {returning}", _arrays(rows))
    return list(cursor.fetchall())


def moment(db: pw.Database, value: datetime) -> datetime | str:
    """A time shared by a batch's rows, as the driver stores it: on SQLite the text its
    default adapter would write for each row (a Python call per value there, ~4% of the
    service's GIL time on SQLite at full load, py-spy), made once for the batch."""
    return value if is_postgres(db) else value.isoformat(" ")


def read_moment(value: datetime | str) -> datetime:
    """A stored time as a naive-UTC datetime (SQLite hands back text)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _arrays(rows: Sequence[Sequence[object]]) -> list[list[object]]:
    """The rows as one list per column."""
    return [list(column) for column in zip(*rows, strict=True)]


@_driver_errors
def execute_many(db: pw.Database, text: str, rows: Sequence[Sequence[object]]) -> None:
    """Runs `text` (with `?` placeholders) for every row in the current transaction: for a
    few rows (psycopg sends them all in one round trip)."""
    if rows:
        db.cursor().executemany(sql(db, text), rows)  # type: ignore[no-untyped-call]


@_driver_errors
def update_rows(
    db: pw.Database,
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[object]],
    *,
    also: str = "",
) -> set[Any] | None:
    """Sets `columns` (name, PostgreSQL type) of the rows whose `id` (text) is each row's
    last value; `also` is a constant assignment added to every row. When an id repeats, its
    last row wins. PostgreSQL gets one UPDATE ... FROM unnest(...) for the batch, parsed and
    planned once rather than per row. Returns the ids it found on PostgreSQL (their rows now locked
    until the transaction ends), None on SQLite."""
    if not rows:
        return set() if is_postgres(db) else None
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    extra = f", {also}" if also else ""
    if not is_postgres(db):
        assignments = ", ".join(f"{name} = ?" for name, _ in columns)
        statement = f"UPDATE {table} SET {assignments}{extra} WHERE id = ?"  # noqa: S608
        cursor.executemany(statement, rows)
        return None
    last = list({row[-1]: row for row in rows}.values())
    assignments = ", ".join(f"{name} = v.{name}" for name, _ in columns)
    names = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"%b::{kind}[]" for _, kind in (*columns, ("id", "text")))
    statement = (
        f"UPDATE {table} AS t SET {assignments}{extra}"  # noqa: S608 (names are constants)
        f" FROM unnest({arrays}) AS v ({names}, id) WHERE t.id = v.id RETURNING t.id"
    )
    cursor.execute(statement, _arrays(last))
    return {row[0] for row in cursor.fetchall()}


def sql(db: pw.Database, text: str) -> str:
    """`text` with its `?` placeholders in the database's own style."""
    return text.replace("?", "%s") if is_postgres(db) else text


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
