"""The delivery worker: a child process that makes attempts (sign, HTTP, outcome) for the
service process, so sending runs on a second core beside Kafka, the store and gRPC.

The two ends talk over a private socket pair in length-prefixed pickle frames, each holding
every request (or result) ready at that moment. Pickle is safe here: only this service's two
processes hold the socket. The worker exits when the service closes its end, or dies."""

import asyncio
import contextlib
import functools
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from typing import Any

import uvloop

from service import logs, runtime
from service.domain.clock import utcnow
from service.domain.outcomes import AttemptResult
from service.domain.pipeline import Job, RecordedAttempt, Target
from service.engine.attempts import AttemptMaker, AttemptSettings, settle
from service.errors import Unavailable

log = logging.getLogger(__name__)
_LENGTH = struct.Struct("!I")


class _Frames:
    """Both ends: collects what is ready during one loop turn and writes it as one frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._outgoing: list[Any] = []

    def put(self, item: Any) -> None:
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(item)

    def _flush(self) -> None:
        items, self._outgoing = self._outgoing, []
        if items and not self._writer.is_closing():
            payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
            self._writer.write(_LENGTH.pack(len(payload)) + payload)

    async def get(self) -> list[Any]:
        """The next frame's items; IncompleteReadError once the other end is gone."""
        (size,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
        # Only this service's own two processes hold the socket (module docstring).
        items: list[Any] = pickle.loads(await self._reader.readexactly(size))  # noqa: S301
        return items

    def close(self) -> None:
        self._writer.close()


class DeliveryWorker:
    """The service's end. A worker that dies fails its attempts in flight with Unavailable
    (their deliveries stay leased, so the retry scheduler sends them again) and the next
    attempt starts a new one."""

    def __init__(self, settings: AttemptSettings) -> None:
        self._settings = settings
        self._frames: _Frames | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reading: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[RecordedAttempt]] = {}
        self._next_id = 0
        self._starting: asyncio.Lock | None = None
        self._closed = False  # once closed, no attempt may start a worker again
        self.requested = 0  # attempts asked of this worker since the start

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def in_flight(self) -> int:
        """Attempts asked and not answered yet."""
        return len(self._pending)

    async def start(self) -> None:
        """Starts the worker now rather than at the first attempt, whose sending (and the
        rate limit's spacing) would otherwise wait for the process to come up."""
        await self._started()

    async def make(self, job: Job, target: Target) -> RecordedAttempt:
        return await self._request(await self._started(), job, target)

    def attempt(self, job: Job, target: Target) -> "asyncio.Future[RecordedAttempt]":
        """`make` without a coroutine while the worker runs (no task per attempt); when it
        must be started first, a task does that."""
        if self._frames is None:
            return asyncio.ensure_future(self.make(job, target))
        return self._request(self._frames, job, target)

    def skip(self, job: Job, target: Target, result: AttemptResult) -> RecordedAttempt:
        """An attempt made without a request: judged here, nothing to send."""
        return settle(self._settings, job, target, result, utcnow())

    def _request(
        self, frames: _Frames, job: Job, target: Target
    ) -> "asyncio.Future[RecordedAttempt]":
        self._next_id += 1
        self.requested += 1
        future: asyncio.Future[RecordedAttempt] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        frames.put((self._next_id, job, target))
        return future

    async def stop(self, grace: float = 0.0) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the socket (the worker exits once its attempts in flight are answered);
        later attempts fail with Unavailable instead of starting another worker."""
        self._closed = True
        frames, self._frames = self._frames, None
        if frames is not None:
            frames.close()
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        self._fail_pending()
        if self._process is not None:
            process, self._process = self._process, None
            try:
                await asyncio.wait_for(process.wait(), self._settings.timeout_seconds + 5)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def _started(self) -> _Frames:
        if self._frames is not None:
            return self._frames
        if self._closed:
            raise Unavailable("the delivery worker is closed: the service is stopping")
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._closed:
                raise Unavailable("the delivery worker is closed: the service is stopping")
            if self._frames is None:
                await self._start()
        assert self._frames is not None
        return self._frames

    async def _start(self) -> None:
        if self._process is not None:  # the previous one died: collect it
            await self._process.wait()
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.engine.worker",
                str(theirs.fileno()),
                pass_fds=[theirs.fileno()],
                # Not in the service's process group: a Ctrl-C or group signal must not end
                # attempts in flight before the service's graceful stop has collected them.
                start_new_session=True,
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        frames = _Frames(reader, writer)
        frames.put(self._settings)
        self._frames = frames
        self._reading = asyncio.create_task(self._read(frames), name="delivery-worker-results")
        log.info("delivery worker started", extra={"pid": self._process.pid})

    async def _read(self, frames: _Frames) -> None:
        try:
            while True:
                for request_id, result in await frames.get():
                    future = self._pending.pop(request_id, None)
                    if future is None or future.done():
                        continue
                    if isinstance(result, RecordedAttempt):
                        future.set_result(result)
                    else:
                        future.set_exception(Unavailable(f"delivery worker: {result}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            if self._frames is frames:
                log.error("delivery worker stopped; starting another on the next attempt")
                self._frames = None
                frames.close()
            self._fail_pending()

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(Unavailable("the delivery worker stopped"))


async def _serve(sock: socket.socket) -> None:
    """The worker's end: each request starts at once, and its result goes back from the
    request's own callback (no task per request)."""
    reader, writer = await asyncio.open_connection(sock=sock)
    frames = _Frames(reader, writer)
    items = await frames.get()
    settings: AttemptSettings = items.pop(0)  # the first item ever sent; requests may follow
    maker = AttemptMaker(settings)
    runtime.freeze_startup_objects()
    running: set[asyncio.Future[RecordedAttempt]] = set()

    def answered(request_id: int, made: "asyncio.Future[RecordedAttempt]") -> None:
        running.discard(made)
        try:
            frames.put((request_id, made.result()))
        except Exception as exc:  # reported to the service, which logs it
            frames.put((request_id, f"{type(exc).__name__}: {exc}"))

    try:
        while True:
            for request_id, job, target in items:
                try:
                    made = maker.attempt(job, target)
                except Exception as exc:
                    frames.put((request_id, f"{type(exc).__name__}: {exc}"))
                    continue
                running.add(made)
                made.add_done_callback(functools.partial(answered, request_id))
            items = await frames.get()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the service closed its end (or died): finish what is in flight, then go
    if running:
        await asyncio.wait(running, timeout=settings.timeout_seconds + 1)
    await maker.close()


def main() -> None:
    # The service decides when attempts stop; a signal to the worker alone changes nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.setup(os.environ.get("WEBHOOKS_LOG_LEVEL", "INFO").upper())
    runtime.tune_gc()
    uvloop.run(_serve(socket.socket(fileno=int(sys.argv[1]))))


if __name__ == "__main__":
    main()
