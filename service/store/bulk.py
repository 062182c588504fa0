"""Hot-path writes as plain SQL with executemany: building each statement through the ORM
cost more CPU than the HTTP request it records (see README "Benchmark")."""

from collections.abc import Sequence

import peewee as pw
from psycopg2.extras import execute_batch


def execute_many(db: pw.Database, sql: str, rows: Sequence[Sequence[object]]) -> None:
    """Runs `sql` (with `?` placeholders) once per row, in the current transaction."""
    if not rows:
        return
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    if isinstance(db, pw.PostgresqlDatabase):
        # psycopg2's executemany is one round trip per row; execute_batch sends pages.
        execute_batch(cursor, sql.replace("?", "%s"), rows, page_size=500)
    else:
        cursor.executemany(sql, rows)
