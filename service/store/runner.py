"""Runs blocking store work off the event loop and translates database failures: on a small
thread pool (PostgreSQL), or on one thread that commits whatever is queued as one
transaction (SQLite's group commit)."""

import asyncio
import contextlib
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import peewee as pw

from service.errors import Unavailable

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)
# Most calls one group transaction takes; the rest wait for the next group.
GROUP_LIMIT = 64
_DATABASE_ERRORS = (pw.OperationalError, pw.InterfaceError)

# A queued call: the work, and the future (on its loop) that gets its result.
_Work = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]
# A finished call: its future, and its result or the exception to raise.
_Settled = tuple[asyncio.Future[Any], Any, BaseException | None]


class StoreRunner:
    """`await runner.call(fn, ...)` runs fn on a store thread with a pooled connection.

    With `group_commit` (SQLite, one writer at a time) a single thread takes every call
    queued at that moment and runs them in one transaction, each in a savepoint of its
    own: one commit, one set of WAL pages and one wake-up of the loop for the whole group
    instead of one per call (make bench). A call's future resolves after the commit, so
    what it wrote is durable and visible once `call` returns."""

    def __init__(
        self,
        db: pw.Database,
        threads: int,
        *,
        inline_reads: bool = False,
        group_commit: bool = False,
    ) -> None:
        self._db = db
        self._inline_reads = inline_reads
        self._pool: ThreadPoolExecutor | None = None
        self._queue: deque[_Work] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        if group_commit:
            self._thread = threading.Thread(target=self._serve, name="store_0", daemon=True)
            self._thread.start()
        else:
            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")

    async def read(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Like `call`, for short reads. With `inline_reads` (SQLite: a read never waits for
        a lock in WAL mode) they run right here: handing a ~30 us read to the store thread
        and back cost several times the read (make bench, gRPC Get)."""
        if self._inline_reads:
            return self._guarded(fn, *args, **kwargs)
        return await self.call(fn, *args, **kwargs)

    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        if self._pool is not None:
            return await loop.run_in_executor(
                self._pool, functools.partial(self._guarded, fn, *args, **kwargs)
            )
        future: asyncio.Future[R] = loop.create_future()
        with self._ready:
            if self._closing:
                raise Unavailable("the store is closed")
            self._queue.append((functools.partial(fn, *args, **kwargs), future, loop))
            self._ready.notify()
        return await future

    def _guarded(self, fn: Callable[..., R], *args: object, **kwargs: object) -> R:
        try:
            with self._db.connection_context():
                return fn(*args, **kwargs)
        except _DATABASE_ERRORS as exc:
            raise _unavailable(exc) from None

    # -- group commit -----------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                group = [self._queue.popleft() for _ in range(min(len(self._queue), GROUP_LIMIT))]
            settled = self._run_group(group)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}
            for (_, _, loop), outcome in zip(group, settled, strict=True):
                by_loop.setdefault(loop, []).append(outcome)
            for loop, outcomes in by_loop.items():
                # A closed loop raises RuntimeError: nobody waits for these any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, outcomes)

    def _run_group(self, group: list[_Work]) -> list[_Settled]:
        try:
            with self._db.connection_context(), self._db.atomic():
                return [self._in_savepoint(work, future) for work, future, _ in group]
        except _DATABASE_ERRORS as exc:
            if len(group) == 1:
                return [(group[0][1], None, _unavailable(exc))]
        # One call's database error fails the whole transaction: run each alone, so the
        # others are not held hostage by it.
        return [outcome for work in group for outcome in self._run_group([work])]

    def _in_savepoint(self, work: Callable[[], Any], future: asyncio.Future[Any]) -> _Settled:
        try:
            with self._db.atomic():  # nested: a savepoint, undone if the call raises
                return future, work(), None
        except _DATABASE_ERRORS:
            raise
        except Exception as exc:  # the caller's to handle (NotFound, IntegrityError, ...)
            return future, None, exc

    def close(self) -> None:
        """Waits for running and queued work, then closes every pooled connection."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._thread is not None:
            with self._ready:
                self._closing = True
                self._ready.notify()
            self._thread.join()
        close_all = getattr(self._db, "close_all", None)
        if close_all is not None:
            close_all()


def _settle(outcomes: list[_Settled]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _unavailable(exc: BaseException) -> Unavailable:
    log.warning("database unavailable: %s", type(exc).__name__)
    return Unavailable("the database is unavailable; retry later")
