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


def test_urgent_calls_go_first_taking_turns_with_waiting_ones(tmp_path: Path) -> None:
    runner = StoreRunner(open_database(f"sqlite:///{tmp_path / 'r.db'}"), 1)
    gate = threading.Event()
    order: list[str] = []

    async def scenario() -> None:
        blocker = asyncio.ensure_future(runner.call(gate.wait, 10))
        await asyncio.sleep(0.05)  # the store thread is busy with it now
        calls = [runner.call(order.append, f"n{n}") for n in (1, 2, 3)]
        calls += [runner.call_first(order.append, f"u{n}") for n in (1, 2)]
        tasks = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0.05)  # every call queued behind the blocker
        gate.set()
        await asyncio.gather(blocker, *tasks)

    try:
        asyncio.run(scenario())
        assert order == ["u1", "n1", "u2", "n2", "n3"]
    finally:
        runner.close()


def test_close_finishes_queued_work_then_refuses_more(tmp_path: Path) -> None:
    runner = StoreRunner(open_database(f"sqlite:///{tmp_path / 'r.db'}"), 1)
    done: list[int] = []

    async def queue_then_close() -> None:
        calls = [asyncio.ensure_future(runner.call(done.append, n)) for n in range(5)]
        await asyncio.sleep(0)  # queued
        await asyncio.get_running_loop().run_in_executor(None, runner.close)
        await asyncio.gather(*calls)
        with pytest.raises(Unavailable, match="shutting down"):
            await runner.call(done.append, 99)

    asyncio.run(queue_then_close())
    assert done == [0, 1, 2, 3, 4]
