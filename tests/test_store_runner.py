"""The store runner: where store work runs, and how database failures come out of it."""

import asyncio
import threading
from pathlib import Path

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
