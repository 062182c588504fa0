"""SQLite's WAL checkpoints on a thread of their own. A checkpoint syncs the WAL and the
database file to disk; inside a commit, where SQLite runs it by default (every 1,000 pages),
its fdatasyncs stall the store thread, and every event and attempt result behind it."""

import asyncio
import logging
import sqlite3
import threading

log = logging.getLogger(__name__)
# Often enough that the WAL stays a few MB at full load, rarely enough to cost nothing.
INTERVAL_SECONDS = 0.25


class Checkpointer:
    """Runs a PASSIVE checkpoint every `interval` seconds on its own connection: it copies
    what it can without waiting for any reader or writer, so it never blocks one. The
    pragma `wal_autocheckpoint` (database.py) stays as a backstop."""

    def __init__(self, path: str, interval: float = INTERVAL_SECONDS) -> None:
        self._path = path
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)

    async def start(self) -> None:
        self._thread.start()

    async def stop(self, grace: float = 0.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            connection = sqlite3.connect(self._path)
        except sqlite3.Error as exc:
            log.warning("WAL checkpoints left to SQLite", extra={"error": str(exc)})
            return
        try:
            while not self._stopping.wait(self._interval):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next round tries again; SQLite's backstop
                    log.warning("WAL checkpoint failed", extra={"error": str(exc)})
        finally:
            connection.close()
