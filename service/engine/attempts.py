"""Makes one delivery attempt: signs the job, sends it and decides what follows, ready to store
and to audit. Runs in the service process or in a delivery worker (service.engine.worker)."""

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from service.domain import payloads
from service.domain.clock import utcnow
from service.domain.ids import new_id
from service.domain.outcomes import AttemptResult, ErrorKind, decide
from service.domain.pipeline import AttemptRecord, Job, RecordedAttempt, Target
from service.domain.signing import webhook_headers
from service.domain.ssrf import IpNetwork
from service.engine.http import HttpSender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttemptSettings:
    """How attempts are made and judged. Picklable, so a delivery worker gets the same:
    `encode_audit` must be a module-level function (pickled by its name)."""

    allow_http: bool
    allow_cidrs: tuple[IpNetwork, ...]
    timeout_seconds: float
    ca_file: Path | None
    schedule: tuple[float, ...]
    jitter: float
    disable_after: timedelta
    audit_topic: str
    encode_audit: Callable[[AttemptRecord], bytes]
    keep_connections: int = 0  # idle connections kept (0: libcurl's default)


class AttemptMaker:
    """`make` never raises for anything the endpoint does: every failure is an outcome."""

    def __init__(self, settings: AttemptSettings) -> None:
        self._settings = settings
        self._sender = HttpSender(
            allow_http=settings.allow_http,
            allow_cidrs=settings.allow_cidrs,
            timeout_seconds=settings.timeout_seconds,
            ca_file=settings.ca_file,
            keep_connections=settings.keep_connections,
        )

    async def make(self, job: Job, target: Target) -> RecordedAttempt:
        return await self.attempt(job, target)

    def attempt(self, job: Job, target: Target) -> "asyncio.Future[RecordedAttempt]":
        """Starts the attempt; the future gets its RecordedAttempt. A plain call, not a
        coroutine: thousands a second, and a task for each cost more than its own work."""
        started = utcnow()
        try:
            sent = self.begin(job, target)
        except Exception as exc:
            # Not the endpoint's doing, yet an attempt all the same: recorded as failed and
            # retried on the schedule, so it ends FAILED instead of coming back forever.
            log.exception("attempt could not be made", extra={"delivery_id": job.delivery_id})
            sent = asyncio.get_running_loop().create_future()
            sent.set_result(
                AttemptResult(
                    error_kind=ErrorKind.INTERNAL,
                    error_message=f"the request could not be made ({type(exc).__name__})",
                )
            )
        recorded: asyncio.Future[RecordedAttempt] = sent.get_loop().create_future()

        def answered(_: "asyncio.Future[AttemptResult]") -> None:
            if recorded.cancelled():
                return
            try:
                recorded.set_result(self.finish(job, target, sent.result(), started))
            except Exception as exc:
                recorded.set_exception(exc)

        sent.add_done_callback(answered)
        return recorded

    def begin(self, job: Job, target: Target) -> "asyncio.Future[AttemptResult]":
        """Signs and starts the request; `finish` turns its result into the attempt."""
        now = time.time()
        body = payloads.stamp(job.body, now)
        headers = webhook_headers(
            target.headers, target.secret_keys, job.delivery_id, int(now), body, job.content_type
        )
        return self._sender.start(target.url, headers, body)

    async def close(self) -> None:
        await self._sender.close()

    def finish(
        self, job: Job, target: Target, result: AttemptResult, started: datetime
    ) -> RecordedAttempt:
        return settle(self._settings, job, target, result, started)

    def skip(self, job: Job, target: Target, result: AttemptResult) -> RecordedAttempt:
        """An attempt made without a request (the endpoint's circuit is open)."""
        return settle(self._settings, job, target, result, utcnow())


def settle(
    settings: AttemptSettings, job: Job, target: Target, result: AttemptResult, started: datetime
) -> RecordedAttempt:
    """What follows from an attempt's result, ready to store and to audit."""
    now = utcnow()
    attempt_number = job.attempts_made + 1
    decision = decide(
        result,
        attempts_made=attempt_number,
        schedule=settings.schedule,
        jitter=settings.jitter,
        random=random.random(),
        now=now,
        failing_since=target.failing_since,
        disable_after=settings.disable_after,
        test=job.test,
    )
    record = AttemptRecord(
        attempt_id=new_id("att"),
        delivery_id=job.delivery_id,
        subscription_id=job.subscription_id,
        event_id=job.event_id,
        tenant=job.tenant,
        event_type=job.event_type,
        attempt_number=attempt_number,
        url=target.url,
        trigger=job.trigger,
        attempt_time=started,
        latency_ms=result.latency_ms,
        http_status=result.http_status,
        error_kind=result.error_kind,
        error_message=result.error_message,
        response_body=result.response_body,
        outcome=decision.outcome,
        next_attempt_time=now + timedelta(seconds=decision.delay)
        if decision.delay is not None
        else None,
        test=job.test,
    )
    return RecordedAttempt(
        record,
        decision.disable,
        settings.audit_topic,
        settings.encode_audit(record),
        ordered=bool(job.ordering_key),
    )
