"""Endpoint verification around subscription writes: the request is checked, the endpoint
pinged, and only then is anything stored."""

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from service.domain import payloads, verification
from service.domain.access import Principal
from service.domain.clock import utcnow
from service.domain.ids import new_id
from service.domain.models import Subscription, SubscriptionSpec
from service.domain.outcomes import AttemptResult
from service.domain.signing import secret_key
from service.domain.signing_secrets import new_secret
from service.errors import FailedPrecondition
from service.usecases.subscriptions import SubscriptionService


class Ping(Protocol):
    def __call__(
        self,
        url: str,
        custom_headers: Mapping[str, str],
        keys: Sequence[bytes],
        message_id: str,
        timestamp: int,
        body: bytes,
        content_type: str,
    ) -> Awaitable[AttemptResult]: ...


class EndpointVerifier:
    """Pings an endpoint; a failure is FAILED_PRECONDITION ENDPOINT_VERIFICATION_FAILED, with
    the cause (TLS, DNS, CONNECT, TIMEOUT, HTTP_STATUS, ADDRESS_NOT_ALLOWED) in its metadata."""

    def __init__(self, ping: Ping, *, mandatory: bool, timeout_seconds: float) -> None:
        self._ping = ping
        self.mandatory = mandatory
        self._timeout = timeout_seconds

    async def verify(self, tenant: str, spec: SubscriptionSpec, secrets: Sequence[str]) -> None:
        message_id, now = new_id("msg"), time.time()
        ping = verification.ping_event(message_id, tenant, spec.name, utcnow())
        body = payloads.stamp(payloads.render(spec.payload, ping), now)
        keys = [secret_key(secret) for secret in secrets]
        result = await self._ping(
            spec.url, spec.headers, keys, message_id, int(now), body, spec.payload.content_type
        )
        problem = verification.failure(result, self._timeout)
        if problem is not None:
            cause, text = problem
            raise FailedPrecondition(
                f"endpoint verification failed: {text}",
                reason="ENDPOINT_VERIFICATION_FAILED",
                metadata={
                    "field": "subscription.url",
                    "cause": cause,
                    "http_status": str(result.http_status),
                },
            )


class VerifiedWrites:
    """Create and Update with the ping between their checks and their write: a refused
    endpoint leaves nothing stored or changed."""

    def __init__(
        self,
        subscriptions: SubscriptionService,
        run: Callable[..., Awaitable[Any]],
        verifier: EndpointVerifier,
    ) -> None:
        self._subs = subscriptions
        self._run = run
        self._verifier = verifier

    async def create(
        self,
        principal: Principal,
        spec: SubscriptionSpec,
        request_id: str,
        request_hash: str,
        *,
        verify: bool,
    ) -> tuple[Subscription, str]:
        secret = new_secret()
        if verification.needed(
            requested=verify, mandatory=self._verifier.mandatory, url_changed=True
        ):
            checked = await self._run(self._subs.check_create, principal, spec, request_id)
            await self._verifier.verify(principal.tenant, checked, [secret])
        result: tuple[Subscription, str] = await self._run(
            self._subs.create, principal, spec, request_id, request_hash, secret
        )
        return result

    async def update(
        self,
        principal: Principal,
        subscription_id: str,
        values: SubscriptionSpec,
        mask: frozenset[str],
        *,
        verify: bool,
        proof: str = "",
    ) -> Subscription:
        if verify or (self._verifier.mandatory and "url" in mask):
            preview = await self._run(
                self._subs.preview_update, principal, subscription_id, values, mask, proof
            )
            if verification.needed(
                requested=verify,
                mandatory=self._verifier.mandatory,
                url_changed=preview.url_changed,
            ):
                await self._verifier.verify(principal.tenant, preview.spec, preview.secrets)
        updated: Subscription = await self._run(
            self._subs.update, principal, subscription_id, values, mask, proof
        )
        return updated
