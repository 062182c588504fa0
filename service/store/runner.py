"""Runs store work and translates database failures: PostgreSQL on a small thread pool, and
SQLite on the event loop itself, every call made in one loop turn committed as one group."""

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import peewee as pw

from service.errors import Unavailable

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)
_DATABASE_ERRORS = (pw.OperationalError, pw.InterfaceError)

# A queued call: the work, and the future that gets its result.
_Work = tuple[Callable[[], Any], asyncio.Future[Any]]
# A finished call: its future, and its result or the exception to raise.
_Settled = tuple[asyncio.Future[Any], Any, BaseException | None]


class StoreRunner:
    """`await runner.call(fn, ...)` runs fn with a pooled connection.

    With `group_commit` (SQLite) there is no store thread: the calls made during one turn
    of the event loop run at the start of the next, in one transaction, each in a savepoint
    of its own. SQLite writes one transaction at a time anyway; on a thread, every step of
    every statement gave the GIL up and waited for the busy loop to hand it back, so an
    ingest of ~3 ms of CPU took 20-30 ms from call to result at 1,000 events/s (make
    bench). One group is one commit instead of one per call. A call's future resolves
    after the commit, so what it wrote is durable once `call` returns."""

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
        self._group_commit = group_commit
        self._pool = (
            None
            if group_commit
            else ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        )
        self._queue: list[_Work] = []
        self._closed = False

    async def read(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Like `call`, for short reads. With `inline_reads` (SQLite: a read never waits for
        a lock in WAL mode) they run right here: handing a ~30 us read to the store thread
        and back cost several times the read (make bench, gRPC Get)."""
        if self._inline_reads:
            return self._guarded(fn, *args, **kwargs)
        return await self.call(fn, *args, **kwargs)

    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._closed:
            raise Unavailable("the store is closed")
        loop = asyncio.get_running_loop()
        if self._pool is not None:
            return await loop.run_in_executor(
                self._pool, functools.partial(self._guarded, fn, *args, **kwargs)
            )
        future: asyncio.Future[R] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._run_queued)
        self._queue.append((functools.partial(fn, *args, **kwargs), future))
        return await future

    def _guarded(self, fn: Callable[..., R], *args: object, **kwargs: object) -> R:
        try:
            with self._db.connection_context():
                return fn(*args, **kwargs)
        except _DATABASE_ERRORS as exc:
            raise _unavailable(exc) from None

    # -- group commit -----------------------------------------------------------------

    def _run_queued(self) -> None:
        group, self._queue = self._queue, []
        for future, result, error in self._run_group(group):
            if future.cancelled():
                continue  # its work is done and committed; nobody waits for the result
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _run_group(self, group: list[_Work]) -> list[_Settled]:
        try:
            with self._db.connection_context(), self._db.atomic():
                return [self._in_savepoint(work, future) for work, future in group]
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
        """Waits for running work, then closes every pooled connection; later calls are
        refused."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        close_all = getattr(self._db, "close_all", None)
        if close_all is not None:
            close_all()


def _unavailable(exc: BaseException) -> Unavailable:
    log.warning("database unavailable: %s", type(exc).__name__)
    return Unavailable("the database is unavailable; retry later")
