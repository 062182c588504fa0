"""Sends attempts' audit records to the broker before the attempts are stored; while the
broker is away or slow they go through the outbox, in the attempts' own transaction."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from service.domain.pipeline import RecordedAttempt
from service.engine.attempt_writer import AttemptWriter
from service.errors import Unavailable
from service.logs import Outage

log = logging.getLogger(__name__)
# Publishes audit records and returns once the broker acked every one; raises Unavailable.
PublishAudit = Callable[[Sequence[RecordedAttempt]], Awaitable[None]]
# How long a batch's records may wait for the broker's ack before they go through the
# outbox instead, and how long after a miss every batch goes through the outbox.
AUDIT_WAIT_SECONDS = 1.0
AUDIT_PAUSE_SECONDS = 5.0
# Records finished within this long go to the broker together: many small sends cost more
# CPU than the outbox rows they spare.
AUDIT_GATHER_SECONDS = 0.05


class AuditPublisher:
    """An acked record needs no outbox row. A record acked but never stored (a crash just
    then) belongs to an attempt that is made again, and audited again: consumers see each
    attempt at least once, told apart by its attempt id."""

    def __init__(self, publish: PublishAudit | None, writer: AttemptWriter) -> None:
        self._publish = publish
        self._writer = writer
        self._direct_after = 0.0  # loop time before which records use the outbox
        self._gathered: list[RecordedAttempt] = []
        self._publishing: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._outage = Outage(log, "audit records go through the outbox")

    def add(self, recorded: RecordedAttempt) -> None:
        loop = asyncio.get_running_loop()
        if self._publish is None or self._stopping or loop.time() < self._direct_after:
            self._writer.add((recorded,))
            return
        if not self._gathered:
            loop.call_later(AUDIT_GATHER_SECONDS, self._publish_gathered)
        self._gathered.append(recorded)

    def close(self) -> None:
        """From now on records go through the outbox; what was gathered is sent."""
        self._stopping = True
        self._publish_gathered()

    async def stop(self) -> None:
        """`close`, then waits for the sends in flight."""
        self.close()
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=AUDIT_WAIT_SECONDS + 1)

    def _publish_gathered(self) -> None:
        batch, self._gathered = self._gathered, []
        if batch:
            publishing = asyncio.ensure_future(self._published(batch))
            self._publishing.add(publishing)
            publishing.add_done_callback(self._publishing.discard)

    async def _published(self, batch: list[RecordedAttempt]) -> None:
        assert self._publish is not None
        acked = False
        try:
            await asyncio.wait_for(self._publish(batch), AUDIT_WAIT_SECONDS)
            acked = True
            self._outage.ended()
        except (Unavailable, TimeoutError) as exc:
            # Records still in flight may be acked later and sent again from the outbox.
            cause = exc.message if isinstance(exc, Unavailable) else "no ack in time"
            self._outage.failed(cause)
            self._direct_after = asyncio.get_running_loop().time() + AUDIT_PAUSE_SECONDS
        except Exception:
            log.exception("audit records not published; they go through the outbox")
        finally:
            self._writer.add(batch, audited=acked)
