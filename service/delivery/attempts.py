"""Makes one delivery attempt: signs the job, sends it and decides what follows, ready to store
and to audit. Runs in the service process or in a delivery worker (service.delivery.worker)."""

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.delivery.http import HttpSender
from service.domain.clock import utcnow
from service.domain.deliveries import AttemptRecord, Job, Target
from service.domain.ids import new_id
from service.domain.outcomes import AttemptResult, decide
from service.domain.signing import signature_header
from service.store.deliveries import RecordedAttempt


@dataclass(frozen=True)
class RetryPolicy:
    """What decides an attempt's outcome: the retry schedule and when to give up on an
    endpoint that keeps failing."""

    schedule: tuple[float, ...]
    jitter: float
    disable_after: timedelta


class AttemptMaker:
    """`make` never raises for anything the endpoint does: every failure is an outcome."""

    def __init__(
        self,
        *,
        sender: HttpSender,
        policy: RetryPolicy,
        encode_audit: Callable[[AttemptRecord], bytes],
        audit_topic: str,
    ) -> None:
        self._sender = sender
        self._policy = policy
        self._encode_audit = encode_audit
        self._audit_topic = audit_topic

    async def make(self, job: Job, target: Target) -> RecordedAttempt:
        started = utcnow()
        timestamp = int(time.time())
        headers = {
            **target.headers,
            "content-type": "application/json",
            "webhook-id": job.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                target.secret_keys, job.delivery_id, timestamp, job.body
            ),
        }
        result = await self._sender.send(target.url, headers, job.body)
        return self._outcome(job, target, result, started)

    async def close(self) -> None:
        await self._sender.close()

    def _outcome(
        self, job: Job, target: Target, result: AttemptResult, started: datetime
    ) -> RecordedAttempt:
        policy = self._policy
        now = utcnow()
        attempt_number = job.attempts_made + 1
        decision = decide(
            result,
            attempts_made=attempt_number,
            schedule=policy.schedule,
            jitter=policy.jitter,
            random=random.random(),
            now=now,
            failing_since=target.failing_since,
            disable_after=policy.disable_after,
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
            record, decision.disable, self._audit_topic, self._encode_audit(record)
        )
