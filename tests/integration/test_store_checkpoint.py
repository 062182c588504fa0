"""WAL checkpoints on their own thread: the store's commits leave the WAL to it, and it moves
the WAL's pages into the database file without a commit waiting for it."""

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.store.checkpoint import Checkpointer
from service.store.database import SQLITE_PRAGMAS, open_database, sqlite_path


def _write_rows(path: Path, rows: int) -> sqlite3.Connection:
    """Rows committed in WAL mode with the service's backstop: the WAL holds them all."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=wal")
    connection.execute(f"PRAGMA wal_autocheckpoint={SQLITE_PRAGMAS['wal_autocheckpoint']}")
    connection.execute("CREATE TABLE t (body BLOB)")
    for _ in range(rows // 100):
        connection.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * 100)
        connection.commit()
    return connection


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_the_thread_moves_committed_pages_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    writer = _write_rows(path, 2000)  # ~2 MB, under the backstop: nothing checkpointed yet
    assert path.stat().st_size < 100_000
    checkpointer = Checkpointer(str(path), interval=0.05)
    asyncio.run(checkpointer.start())
    try:
        assert _wait_for(lambda: path.stat().st_size > 2_000_000)
        # The writer goes on meanwhile, never waiting for the checkpoint.
        writer.executemany("INSERT INTO t VALUES (?)", [(b"y" * 1000,)] * 100)
        writer.commit()
        assert writer.execute("SELECT count(*) FROM t").fetchone() == (2100,)
    finally:
        asyncio.run(checkpointer.stop())
        writer.close()


def test_stop_ends_the_thread_and_a_missing_directory_only_logs(tmp_path: Path) -> None:
    checkpointer = Checkpointer(str(tmp_path / "absent" / "c.db"), interval=0.01)
    asyncio.run(checkpointer.start())
    asyncio.run(checkpointer.stop())  # the thread found no file to open and ended; stop returns
    live = Checkpointer(str(tmp_path / "c.db"), interval=0.01)
    asyncio.run(live.start())
    time.sleep(0.05)
    asyncio.run(live.stop())
    asyncio.run(live.stop())  # twice is harmless


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/lib/w.db", "var/lib/w.db"),
        ("sqlite:////var/lib/w.db", "/var/lib/w.db"),
        ("sqlite:///:memory:", None),
        ("sqlite:///", None),
        ("postgresql://u@localhost/test", None),
    ],
)
def test_sqlite_path_names_the_file_of_a_sqlite_url_only(url: str, path: str | None) -> None:
    assert sqlite_path(url) == path


def test_the_service_database_keeps_the_backstop_pragma(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'p.db'}")
    with db.connection_context():
        (pages,) = db.execute_sql("PRAGMA wal_autocheckpoint").fetchone()  # type: ignore[no-untyped-call]
    assert pages == SQLITE_PRAGMAS["wal_autocheckpoint"] == 16_000
