"""Background tasks: stopping one within a grace period, and work repeated on an interval."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from service.errors import Unavailable

log = logging.getLogger(__name__)


async def finish(task: "asyncio.Task[Any]", seconds: float) -> None:
    """Lets the task end within `seconds`, then cancels it; its errors are logged, not raised."""
    try:
        await asyncio.wait_for(asyncio.shield(task), seconds)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    except Exception:
        log.exception("background task ended with an error", extra={"task": task.get_name()})


def log_failure(task: "asyncio.Task[Any]") -> None:
    """A done callback: a background task that failed says so in the log."""
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "background task failed", extra={"task": task.get_name()}, exc_info=task.exception()
        )


class Periodic:
    """Runs `work` every `seconds` from `start` until `stop`; a database outage (Unavailable)
    only skips a round."""

    def __init__(self, name: str, seconds: float, work: Callable[[], Awaitable[Any]]) -> None:
        self.name = name
        self._seconds = seconds
        self._work = work
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)
        self._task.add_done_callback(log_failure)

    async def stop(self, grace: float) -> None:
        self._stopping.set()
        if self._task is not None:
            await finish(self._task, grace)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._seconds)
            if self._stopping.is_set():
                return
            with contextlib.suppress(Unavailable):
                await self._work()
