"""The store runner: where store work runs, and how database failures come out of it."""

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from service.errors import Unavailable
from service.store.database import open_database
from service.store.runner import StoreRunner


def _thread_name() -> str:
    return threading.current_thread().name


def _broken() -> None:
    raise pw.OperationalError("disk I/O error")


@pytest.mark.parametrize(
    ("inline_reads", "read_on"),
    [(True, "MainThread"), (False, "store_0")],
)
def test_reads_run_inline_only_when_asked(tmp_path: Path, inline_reads: bool, read_on: str) -> None:
    runner = StoreRunner(
        open_database(f"sqlite:///{tmp_path / 'r.db'}"), 1, inline_reads=inline_reads
    )

    async def where() -> tuple[str, str]:
        return await runner.read(_thread_name), await runner.call(_thread_name)

    try:
        assert asyncio.run(where()) == (read_on, "store_0")  # writes always on the store thread
    finally:
        runner.close()


@pytest.mark.parametrize("inline_reads", [True, False])
def test_a_database_failure_is_unavailable_either_way(tmp_path: Path, inline_reads: bool) -> None:
    runner = StoreRunner(
        open_database(f"sqlite:///{tmp_path / 'r.db'}"), 1, inline_reads=inline_reads
    )
    try:
        with pytest.raises(Unavailable, match="database is unavailable"):
            asyncio.run(runner.read(_broken))
    finally:
        runner.close()


def _table(db: pw.Database) -> None:
    db.execute_sql("CREATE TABLE IF NOT EXISTS t (n INTEGER UNIQUE)")  # type: ignore[no-untyped-call]


def _insert(db: pw.Database, n: int) -> int:
    db.execute_sql("INSERT INTO t (n) VALUES (?)", (n,))  # type: ignore[no-untyped-call]
    return n


def _rows(db: pw.Database) -> list[int]:
    cursor = db.execute_sql("SELECT n FROM t ORDER BY n")  # type: ignore[no-untyped-call]
    return [n for (n,) in cursor.fetchall()]


def _insert_then_fail(db: pw.Database, n: int, error: Exception) -> None:
    _insert(db, n)
    raise error


def test_group_commit_runs_queued_calls_in_one_transaction_each_in_its_own_savepoint(
    tmp_path: Path,
) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'g.db'}")
    runner = StoreRunner(db, 1, group_commit=True)
    commits: list[int] = []

    def counted_commit(original: Any = db.commit) -> None:
        commits.append(1)
        original()

    async def burst() -> Sequence[object]:
        await runner.call(_table, db)
        commits.clear()
        gate = threading.Event()
        blocker = asyncio.ensure_future(runner.call(gate.wait, 10))
        await asyncio.sleep(0.1)  # the store thread is inside the blocker's group
        # Queued together: one group. The failing call's own insert is undone by its
        # savepoint; the others commit; a duplicate (IntegrityError) is the caller's.
        calls = [
            runner.call(_insert, db, 1),
            runner.call(_insert_then_fail, db, 2, ValueError("refused")),
            runner.call(_insert, db, 3),
            runner.call(_insert, db, 3),
        ]
        queued = asyncio.gather(*calls, return_exceptions=True)
        await asyncio.sleep(0.1)
        gate.set()
        assert await blocker
        return await queued

    db.commit = counted_commit  # type: ignore[method-assign]
    try:
        results = asyncio.run(burst())
        assert results[0] == 1 and results[2] == 3
        assert isinstance(results[1], ValueError)
        assert isinstance(results[3], pw.IntegrityError)
        assert commits == [1, 1]  # the blocker's group, then the four in one
        assert asyncio.run(runner.read(_rows, db)) == [1, 3]
    finally:
        runner.close()


def test_group_commit_isolates_a_call_whose_database_error_breaks_the_group(
    tmp_path: Path,
) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'g.db'}")
    runner = StoreRunner(db, 1, group_commit=True)

    async def burst() -> Sequence[object]:
        await runner.call(_table, db)
        calls = [
            runner.call(_insert, db, 1),
            runner.call(_insert_then_fail, db, 2, pw.OperationalError("disk I/O error")),
            runner.call(_insert, db, 3),
        ]
        results: list[object] = await asyncio.gather(*calls, return_exceptions=True)
        return results

    try:
        results = asyncio.run(burst())
        assert results[0] == 1 and results[2] == 3
        assert isinstance(results[1], Unavailable)
        assert asyncio.run(runner.read(_rows, db)) == [1, 3]
    finally:
        runner.close()


def test_group_commit_finishes_queued_work_at_close_and_refuses_more(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'g.db'}")
    runner = StoreRunner(db, 1, group_commit=True)

    async def queue_then_close() -> None:
        await runner.call(_table, db)
        pending = [asyncio.ensure_future(runner.call(_insert, db, n)) for n in range(50)]
        await asyncio.sleep(0)  # all queued
        await asyncio.get_running_loop().run_in_executor(None, runner.close)
        assert [await p for p in pending] == list(range(50))
        with pytest.raises(Unavailable):
            await runner.call(_insert, db, 99)

    asyncio.run(queue_then_close())
    reopened = open_database(f"sqlite:///{tmp_path / 'g.db'}")
    check = StoreRunner(reopened, 1, inline_reads=True)
    try:
        assert asyncio.run(check.read(_rows, reopened)) == list(range(50))
    finally:
        check.close()
