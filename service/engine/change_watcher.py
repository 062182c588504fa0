"""Reads the subscription change log (service.store.changes) every WATCH_SECONDS and tells
the caches which subscriptions another instance (or this one) changed."""

from collections.abc import Callable

import peewee as pw

from service.store.changes import ChangeCursor, read_changes
from service.store.runner import StoreRunner

# Another instance's change reaches this one's caches within about this long.
WATCH_SECONDS = 0.5


class ChangeWatcher:
    """`poll` is the work of a Periodic; `changed` gets the (subscription id, tenant) pairs."""

    def __init__(
        self,
        runner: StoreRunner,
        db: pw.Database,
        changed: Callable[[set[tuple[str, str]]], None],
    ) -> None:
        self._runner = runner
        self._db = db
        self._changed = changed
        self._cursor = ChangeCursor()

    async def poll(self) -> None:
        found = await self._runner.read(read_changes, self._db, self._cursor)
        if found:
            self._changed(found)
