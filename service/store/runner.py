"""Runs blocking store work on a small thread pool and translates database failures."""

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import peewee as pw

from service.errors import Unavailable

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)


class StoreRunner:
    """`await runner.call(fn, ...)` runs fn on a store thread with a pooled connection."""

    def __init__(self, db: pw.Database, threads: int, *, inline_reads: bool = False) -> None:
        self._db = db
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        self._inline_reads = inline_reads

    async def read(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Like `call`, for short reads. With `inline_reads` (SQLite: a read never waits for
        a lock in WAL mode) they run right here: handing a ~30 us read to the store thread
        and back cost several times the read (make bench, gRPC Get)."""
        if self._inline_reads:
            return self._guarded(fn, *args, **kwargs)
        return await self.call(fn, *args, **kwargs)

    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(self._guarded, fn, *args, **kwargs)
        )

    def _guarded(self, fn: Callable[..., R], *args: object, **kwargs: object) -> R:
        try:
            with self._db.connection_context():
                return fn(*args, **kwargs)
        except (pw.OperationalError, pw.InterfaceError) as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            raise Unavailable("the database is unavailable; retry later") from None

    def close(self) -> None:
        """Waits for running work, then closes every pooled connection."""
        self._pool.shutdown(wait=True)
        close_all = getattr(self._db, "close_all", None)
        if close_all is not None:
            close_all()
