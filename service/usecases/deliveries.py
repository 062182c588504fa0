"""Delivery and event use cases: list, inspect, retry, recover, test events and publishing.
Unlike the other use cases these are async: they reach the dispatcher and the broker."""

import hashlib
import json
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime

from service.domain.access import Principal, require_owner_or_admin, require_scope
from service.domain.clock import utcnow
from service.domain.event_rules import EVENT_ID_REUSED, EventRejected, check_event
from service.domain.ids import new_id
from service.domain.models import Event, Subscription
from service.domain.outcomes import DeliveryStatus
from service.domain.pipeline import DeliveryFilter, DeliveryView
from service.engine.dispatcher import DeliveryPolicy, Dispatcher
from service.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    invalid,
)
from service.store.delivery_queries import DeliveryQueries, Replay
from service.store.event_types import EventTypeStore
from service.store.ingest import IngestStore
from service.store.runner import StoreRunner
from service.store.subscriptions import SubscriptionStore
from service.usecases.catalog import EventTypeCheck

# Writes an event to the ingest topic; returns (topic, partition, offset).
Publish = Callable[[Event], Awaitable[tuple[str, int, int]]]
TEST_EVENT_TYPE = "webhook.test"
_FIELD_OF_REASON = {
    "MISSING_ID": "event.id",
    "INVALID_ID": "event.id",
    "MISSING_TYPE": "event.type",
    "INVALID_TYPE": "event.type",
    "UNKNOWN_EVENT_TYPE": "event.type",
    "INVALID_TENANT": "event.tenant",
    "INVALID_ATTRIBUTE": "event.source",
    "INVALID_TIME": "event.time",
}


def replay_key(principal: Principal, request_id: str) -> str:
    """What marks a replay's deliveries: the same for the same caller's request_id, so a
    retry adds none; a new one without."""
    if not request_id:
        return new_id("rpl")
    digest = hashlib.sha256("\0".join((principal.tenant, principal.name, request_id)).encode())
    return "rpl_" + digest.hexdigest()[:32]


def invalid_event(rejected: EventRejected) -> InvalidArgument:
    """The INVALID_ARGUMENT for a published event refused by the ingest rules, naming the
    field the rule is about."""
    field = _FIELD_OF_REASON.get(rejected.reason, "event.data")
    return invalid(field, rejected.message, rejected.reason)


class DeliveryService:
    def __init__(
        self,
        *,
        runner: StoreRunner,
        queries: DeliveryQueries,
        ingest: IngestStore,
        event_types: EventTypeStore,
        subscriptions: SubscriptionStore,
        dispatcher: Dispatcher,
        policy: DeliveryPolicy,
        publish: Publish | None,
        replay_limit: int = 10_000,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._replay_limit = replay_limit
        self._wake = wake  # the scheduler, when a key may go on
        self._run = runner.call
        self._store = queries
        self._ingest = ingest
        self._event_types = event_types
        self._subscriptions = subscriptions
        self._dispatcher = dispatcher
        self._policy = policy
        self._publish = publish

    async def list_page(
        self,
        principal: Principal,
        where: DeliveryFilter,
        after: str | None,
        limit: int,
        skip: int = 0,
    ) -> tuple[list[DeliveryView], bool]:
        return await self._run(self._store.list_page, principal.tenant, where, after, limit, skip)

    async def get(self, principal: Principal, delivery_id: str) -> DeliveryView:
        return await self._run(self._store.get, principal.tenant, delivery_id)

    async def retry(self, principal: Principal, delivery_id: str) -> DeliveryView:
        """Queued for the scheduler's next pass (within WEBHOOKS_SCHEDULER_INTERVAL_SECONDS).
        Only the subscription's creator or an admin may, as for every change to it."""
        view = await self._run(self._store.get, principal.tenant, delivery_id)
        await self._owned(principal, view.subscription_id)
        return await self._run(self._store.retry, principal.tenant, delivery_id)

    async def release(self, principal: Principal, delivery_id: str) -> DeliveryView:
        """The next events of the key the delivery holds go (scheduler's next pass)."""
        view = await self._run(self._store.get, principal.tenant, delivery_id)
        await self._owned(principal, view.subscription_id)
        released = await self._run(self._store.release, principal.tenant, delivery_id)
        self._wake()
        return released

    async def recover(
        self,
        principal: Principal,
        subscription_id: str,
        window: tuple[datetime, datetime],
        statuses: Collection[DeliveryStatus],
    ) -> int:
        """Queued for the scheduler's next pass, each next attempt MANUAL."""
        await self._owned(principal, subscription_id)
        return await self._run(
            self._store.recover, principal.tenant, subscription_id, window, statuses
        )

    async def replay(
        self,
        principal: Principal,
        subscription_id: str,
        window: tuple[datetime, datetime],
        event_type: str,
        request: tuple[str, str] = ("", ""),
    ) -> int:
        """New deliveries of the window's stored events for the subscription, queued for the
        scheduler's next pass. `request` is (request_id, its fingerprint)."""
        await self._owned(principal, subscription_id)
        request_id, request_hash = request
        catalog = await self._run(self._event_types.catalog)
        replay = Replay(
            since=window[0],
            until=window[1],
            event_type=event_type,
            key=replay_key(principal, request_id),
            limit=self._replay_limit,
            required_scopes={name: t.required_scope for name, t in catalog.items()},
            request_id=request_id,
            request_hash=request_hash if request_id else "",
        )
        return await self._run(self._store.replay, principal.tenant, subscription_id, replay)

    async def _owned(self, principal: Principal, subscription_id: str) -> Subscription:
        subscription = await self._run(self._subscriptions.get, principal.tenant, subscription_id)
        require_owner_or_admin(principal, subscription.created_by)
        return subscription

    async def send_test(
        self, principal: Principal, subscription_id: str, event_type: str
    ) -> DeliveryView:
        """Sends a sample of `event_type` (its catalog example, marked test) through the
        endpoint's limits and returns the delivery with its attempt, or still pending when
        those limits hold it back longer than an attempt may take."""
        catalog = await self._run(self._event_types.catalog)
        subscription = await self._owned(principal, subscription_id)
        if not subscription.spec.enabled:
            raise FailedPrecondition(
                "the subscription is disabled; enable it first", reason="SUBSCRIPTION_DISABLED"
            )
        if not event_type:
            exact = [t for t in subscription.spec.event_types if t in catalog]
            event_type = exact[0] if exact else TEST_EVENT_TYPE
        if event_type not in catalog:
            raise invalid(
                "event_type",
                f"{event_type!r} is not in the event type catalog",
                "UNKNOWN_EVENT_TYPES",
            )
        example = catalog[event_type].example_json or "{}"
        event = Event(
            id=new_id("test"),
            type=event_type,
            tenant=principal.tenant,
            time=utcnow(),
            data=json.dumps(json.loads(example), separators=(",", ":")).encode(),
        )
        job = await self._run(
            self._store.create_test_delivery,
            principal.tenant,
            subscription_id,
            event,
            self._policy.lease,
        )
        await self._dispatcher.deliver_soon(job, wait=self._policy.attempt_timeout + 2)
        return await self._run(self._store.get, principal.tenant, job.delivery_id)

    async def publish(self, principal: Principal, event: Event) -> tuple[str, int, int]:
        """Validates like ingest does, then writes to the ingest topic."""
        if event.tenant != principal.tenant:
            raise PermissionDenied(
                "events may only be published to the caller's own tenant", reason="WRONG_TENANT"
            )
        check = EventTypeCheck(await self._run(self._event_types.catalog))
        try:
            check_event(event)
            check(event)
        except EventRejected as rejected:
            raise invalid_event(rejected) from None
        # A key publishes only into the domains it may read: the type's subscribe scope.
        if scope := check.required_scopes[event.type]:
            require_scope(principal, scope)
        if await self._run(self._ingest.reuses_id, event):
            raise AlreadyExists(
                EVENT_ID_REUSED.message,
                reason=EVENT_ID_REUSED.reason,
                metadata={"field": "event.id"},
            )
        if self._publish is None:
            raise Unavailable("Kafka is disabled on this instance (WEBHOOKS_KAFKA_ENABLED=false)")
        return await self._publish(event)
