"""Runs blocking store work on a few store threads, urgent work first, and translates
database failures."""

import asyncio
import contextlib
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import peewee as pw

from service.errors import Unavailable
from service.logs import Outage

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)
# A queued call: the caller's loop, its future and the work.
_Work = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class StoreRunner:
    """`await runner.call(fn, ...)` runs fn on a store thread with a pooled connection.

    `call_first` queues the call ahead of every queued `call`, taking turns with them when
    both wait (so neither starves): SQLite has one store thread, and an ingest batch queued
    behind attempt records and outbox reads added that wait to every event's latency."""

    def __init__(self, db: pw.Database, threads: int, *, inline_reads: bool = False) -> None:
        self._db = db
        self._inline_reads = inline_reads
        self._ready = threading.Condition()
        self._urgent: deque[_Work] = deque()
        self._normal: deque[_Work] = deque()
        self._urgent_last = False
        self._closed = False
        # Logged once when statements start failing and once when one succeeds again.
        self.outage = Outage(log, "database unreachable; calls answer UNAVAILABLE meanwhile")
        self._threads = [
            threading.Thread(target=self._work, name=f"store_{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    async def read(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Like `call`, for short reads. With `inline_reads` (SQLite: a read never waits for
        a lock in WAL mode) they run right here: the hand-off to the store thread and back
        costs more than such a read."""
        if self._inline_reads:
            return self._guarded(fn, *args, **kwargs)
        return await self.call(fn, *args, **kwargs)

    async def read_first(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Like `read`, queued as `call_first` when it does not run right here."""
        if self._inline_reads:
            return self._guarded(fn, *args, **kwargs)
        return await self.call_first(fn, *args, **kwargs)

    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._submit(self._normal, functools.partial(fn, *args, **kwargs))

    async def call_first(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Like `call`, ahead of every queued `call` (those already running finish first)."""
        return await self._submit(self._urgent, functools.partial(fn, *args, **kwargs))

    def _submit(self, line: "deque[_Work]", work: Callable[[], R]) -> "asyncio.Future[R]":
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        with self._ready:
            if self._closed:
                raise Unavailable("the store is shutting down")
            line.append((loop, future, work))
            self._ready.notify()
        return future

    def _next(self) -> "_Work | None":
        """The next call to run (None once closed and drained): urgent first, but a waiting
        normal call goes after each urgent one."""
        with self._ready:
            while not (self._urgent or self._normal or self._closed):
                self._ready.wait()
            if self._urgent and not (self._normal and self._urgent_last):
                self._urgent_last = True
                return self._urgent.popleft()
            self._urgent_last = False
            return self._normal.popleft() if self._normal else None

    def _work(self) -> None:
        while (item := self._next()) is not None:
            loop, future, work = item
            try:
                outcome: tuple[object, BaseException | None] = (self._guarded(work), None)
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome = (None, exc)
            # RuntimeError: the caller's loop is closed, so nobody is waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, *outcome)

    def _guarded(self, fn: Callable[..., R], *args: object, **kwargs: object) -> R:
        try:
            with self._db.connection_context():
                result = fn(*args, **kwargs)
        except (pw.OperationalError, pw.InterfaceError):
            self.outage.failed("no answer from the database")
            # The pool's idle connections died with this one (a restart, a failover): drop
            # them now rather than let each fail one more call later.
            close_idle = getattr(self._db, "close_idle", None)
            if close_idle is not None:
                close_idle()
            raise Unavailable("the database is unavailable; retry later") from None
        self.outage.ended()
        return result

    async def stop(self, grace: float = 0.0) -> None:
        """`close` off the event loop: the work queued so far is finished first."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Waits for the work queued so far, then closes every pooled connection."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
        close_all = getattr(self._db, "close_all", None)
        if close_all is not None:
            close_all()


def _settle(future: "asyncio.Future[Any]", result: object, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
