"""The store runner: where store work runs, and how database failures come out of it."""

import asyncio
import threading
from pathlib import Path

import peewee as pw
import pytest

from service.errors import Unavailable
from service.store.database import open_database
from service.store.runner import StoreRunner
from service.store.tables import database_proxy


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


def test_an_outage_is_logged_once_however_many_calls_fail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = StoreRunner(open_database(f"sqlite:///{tmp_path / 'r.db'}"), 2)

    async def calls() -> None:
        for _ in range(20):
            with pytest.raises(Unavailable):
                await runner.call(_broken)
        await runner.call(_thread_name)
        await runner.call(_thread_name)

    try:
        with caplog.at_level("INFO", logger="service.store.runner"):
            asyncio.run(calls())
    finally:
        runner.close()
    assert [r.getMessage() for r in caplog.records] == [
        "database unreachable; calls answer UNAVAILABLE meanwhile",
        "database unreachable; calls answer UNAVAILABLE meanwhile: working again",
    ]


@pytest.mark.parametrize(
    ("url", "timeout"),
    [("postgresql://u@db.example/w", 5), ("postgresql://u@db.example/w?connect_timeout=9", 9)],
)
def test_postgres_connects_give_up_after_a_timeout(url: str, timeout: int) -> None:
    bound = database_proxy.obj  # open_database binds the tables; this test's must not stay
    try:
        assert open_database(url).connect_params["connect_timeout"] == timeout
    finally:
        database_proxy.initialize(bound)


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
