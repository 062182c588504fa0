"""webhooks.v1.WebhookService: authenticates, converts, and runs the use cases on store threads."""

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from kafka.codec import event_from_proto
from service.api import convert
from service.api.status import INTERNAL, to_status
from service.domain import event_patterns, pagination
from service.domain.access import (
    CATALOG,
    READ,
    WRITE,
    KeyEntry,
    Principal,
    authenticate,
    require_scope,
)
from service.domain.event_rules import EventRejected
from service.domain.ordering import MAX_KEY
from service.domain.updates import resolve_mask
from service.errors import (
    FieldViolation,
    InvalidArgument,
    Unavailable,
    WebhookError,
    invalid,
)
from service.metrics import Metrics
from service.store.runner import StoreRunner
from service.usecases import catalog, subscriptions
from service.usecases.catalog import CatalogService
from service.usecases.deliveries import DeliveryService, invalid_event
from service.usecases.subscriptions import MAX_REQUEST_ID, SubscriptionService
from service.usecases.verification import VerifiedWrites
from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, Principal], Awaitable[Response]]


class Undecodable:
    """A request body that is not the RPC's message; `problem` says why (protobuf's text)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def lenient_parser(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that hands an unparsable body on as Undecodable."""

    def parse_or_flag(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(str(exc).rpartition(": ")[2] or "does not parse")

    return parse_or_flag


def rpc(scope: str) -> Callable[[Handler[Request, Response]], Callable[..., Awaitable[Response]]]:
    """Wraps a handler: API key and scope first, then domain errors mapped to gRPC statuses."""

    def decorate(handler: Handler[Request, Response]) -> Callable[..., Awaitable[Response]]:
        method = handler.__name__

        @functools.wraps(handler)
        async def wrapper(
            self: "WebhookServicer", request: Request, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Response:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if self.draining:
                    raise Unavailable(
                        "the service is shutting down; retry on another instance",
                        reason="SHUTTING_DOWN",
                    )
                principal = authenticate(self.keys(), _authorization(context))
                require_scope(principal, scope)
                if isinstance(request, Undecodable):
                    raise InvalidArgument(
                        [
                            FieldViolation(
                                "request",
                                f"is not a valid message: {request.problem}",
                                "MALFORMED_REQUEST",
                            )
                        ]
                    )
                with_nul = convert.strings_with_nul(request)  # type: ignore[arg-type]
                if with_nul:
                    problem = "must not contain NUL characters"
                    raise InvalidArgument(
                        [FieldViolation(path, problem, "CONTROL_CHARACTERS") for path in with_nul]
                    )
                return await handler(self, request, principal)
            except WebhookError as error:
                status = to_status(error)
                code = status.code
                log.info(
                    "rpc refused",
                    extra={"rpc": method, "code": status.code.name, "reason": error.reason},
                )
                await context.abort(status.code, status.details, status.trailing_metadata)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the caller went away or its deadline passed
                raise
            except Exception:
                code = INTERNAL.code
                log.exception("rpc failed", extra={"rpc": method})
                await context.abort(INTERNAL.code, INTERNAL.details, INTERNAL.trailing_metadata)
            finally:
                self.metrics.rpcs.labels(method, code.name).inc()
                self.metrics.rpc_seconds.labels(method).observe(time.perf_counter() - started)
            raise AssertionError("abort returned")  # pragma: no cover

        return wrapper

    return decorate


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _fingerprint(request: Any, principal: Principal) -> str:
    """Ties a request_id to the principal and the request's content (request_id excluded):
    another caller replaying it gets REQUEST_ID_REUSED, never the first result."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.request_id = ""
    digest = hashlib.sha256(principal.name.encode() + b"\0")
    digest.update(copy.SerializeToString(deterministic=True))
    return digest.hexdigest()


class WebhookServicer(pb_grpc.WebhookServiceServicer):
    """Thin: every rule lives in the use cases; this class translates and authenticates."""

    def __init__(
        self,
        runner: StoreRunner,
        subscriptions_: SubscriptionService,
        writes: VerifiedWrites,
        catalog_: CatalogService,
        deliveries: DeliveryService,
        keys: Callable[[], Mapping[str, KeyEntry]],
        on_subscription_change: Callable[[str], None] = lambda _: None,
        on_catalog_change: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
    ) -> None:
        self._run = runner.call
        self._read = runner.read
        self._subs = subscriptions_
        self._writes = writes
        self._catalog = catalog_
        self._deliveries = deliveries
        self._subscription_changed = on_subscription_change
        self._catalog_changed = on_catalog_change
        self.keys = keys
        self.metrics = metrics or Metrics()
        self.draining = False  # shutting down: every call is answered UNAVAILABLE

    # -- subscriptions ---------------------------------------------------------

    @rpc(WRITE)
    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, principal: Principal
    ) -> pb.CreateSubscriptionResponse:
        spec = convert.spec_from_pb(request.subscription)
        fingerprint = _fingerprint(request, principal) if request.request_id else ""
        sub, secret = await self._writes.create(
            principal, spec, request.request_id, fingerprint, verify=request.verify_endpoint
        )
        self._subscription_changed(sub.id)
        return pb.CreateSubscriptionResponse(
            subscription=convert.subscription_to_pb(sub), secret=secret
        )

    @rpc(READ)
    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, principal: Principal
    ) -> pb.GetSubscriptionResponse:
        sub = await self._read(self._subs.get, principal, _required_id(request.id))
        return pb.GetSubscriptionResponse(subscription=convert.subscription_to_pb(sub))

    @rpc(READ)
    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, principal: Principal
    ) -> pb.ListSubscriptionsResponse:
        size = pagination.page_size(request.page_size)
        query = pagination.query_fingerprint("subscriptions", principal.tenant)
        after = pagination.decode_token(request.page_token, query)
        skip = pagination.skip(request.skip)
        subs, more, total = await self._read(self._subs.list_page, principal, after, size, skip)
        # One constructor call for the whole page, each item as a dict of its fields (which
        # protobuf takes, though its stubs say messages): cheaper than an add() per item.
        return pb.ListSubscriptionsResponse(
            subscriptions=[convert.subscription_fields(sub) for sub in subs],  # type: ignore[misc]
            next_page_token=pagination.encode_token(subs[-1].id, query) if more else "",
            total_size=total,
        )

    @rpc(WRITE)
    async def UpdateSubscription(
        self, request: pb.UpdateSubscriptionRequest, principal: Principal
    ) -> pb.UpdateSubscriptionResponse:
        subscription_id = _required_id(request.subscription.id, "subscription.id")
        mask = resolve_mask(
            list(request.update_mask.paths),
            allowed=subscriptions.UPDATABLE,
            output_only=subscriptions.OUTPUT_ONLY,
            populated=[
                f
                for f in convert.populated_subscription_fields(request.subscription)
                if f in subscriptions.UPDATABLE
            ],
        )
        values = convert.spec_from_pb(request.subscription)
        sub = await self._writes.update(
            principal,
            subscription_id,
            values,
            mask,
            verify=request.verify_endpoint,
            proof=request.secret_proof,
        )
        self._subscription_changed(subscription_id)
        return pb.UpdateSubscriptionResponse(subscription=convert.subscription_to_pb(sub))

    @rpc(WRITE)
    async def DeleteSubscription(
        self, request: pb.DeleteSubscriptionRequest, principal: Principal
    ) -> pb.DeleteSubscriptionResponse:
        await self._run(
            self._subs.delete, principal, _required_id(request.id), request.secret_proof
        )
        self._subscription_changed(request.id)
        return pb.DeleteSubscriptionResponse()

    @rpc(WRITE)
    async def RotateSubscriptionSecret(
        self, request: pb.RotateSubscriptionSecretRequest, principal: Principal
    ) -> pb.RotateSubscriptionSecretResponse:
        overlap = (
            convert.duration(request.overlap, "overlap") if request.HasField("overlap") else None
        )
        sub, secret = await self._run(
            self._subs.rotate_secret,
            principal,
            _required_id(request.id),
            overlap,
            request.secret_proof,
        )
        self._subscription_changed(sub.id)
        return pb.RotateSubscriptionSecretResponse(
            subscription=convert.subscription_to_pb(sub), secret=secret
        )

    # -- event type catalog ------------------------------------------------------

    @rpc(READ)
    async def ListEventTypes(
        self, request: pb.ListEventTypesRequest, principal: Principal
    ) -> pb.ListEventTypesResponse:
        size = pagination.page_size(request.page_size)
        query = pagination.query_fingerprint("event_types", request.subscribable_only)
        after = pagination.decode_token(request.page_token, query)
        items, more = await self._run(
            self._catalog.list_page, principal, after, size, request.subscribable_only
        )
        return pb.ListEventTypesResponse(
            event_types=[convert.event_type_to_pb(e) for e in items],
            next_page_token=pagination.encode_token(items[-1].name, query) if more else "",
        )

    @rpc(READ)
    async def GetEventType(
        self, request: pb.GetEventTypeRequest, principal: Principal
    ) -> pb.GetEventTypeResponse:
        item = await self._run(self._catalog.get, _required_id(request.name, "name"))
        return pb.GetEventTypeResponse(event_type=convert.event_type_to_pb(item))

    @rpc(CATALOG)
    async def CreateEventType(
        self, request: pb.CreateEventTypeRequest, principal: Principal
    ) -> pb.CreateEventTypeResponse:
        item = await self._run(self._catalog.create, convert.event_type_from_pb(request.event_type))
        self._catalog_changed()
        return pb.CreateEventTypeResponse(event_type=convert.event_type_to_pb(item))

    @rpc(CATALOG)
    async def UpdateEventType(
        self, request: pb.UpdateEventTypeRequest, principal: Principal
    ) -> pb.UpdateEventTypeResponse:
        name = _required_id(request.event_type.name, "event_type.name")
        mask = resolve_mask(
            list(request.update_mask.paths),
            allowed=catalog.UPDATABLE,
            output_only=(*catalog.OUTPUT_ONLY, "name"),
            populated=[
                f.name for f, _ in request.event_type.ListFields() if f.name in catalog.UPDATABLE
            ],
        )
        values = convert.event_type_from_pb(request.event_type)
        item = await self._run(self._catalog.update, name, values, mask)
        self._catalog_changed()
        return pb.UpdateEventTypeResponse(event_type=convert.event_type_to_pb(item))

    @rpc(CATALOG)
    async def DeleteEventType(
        self, request: pb.DeleteEventTypeRequest, principal: Principal
    ) -> pb.DeleteEventTypeResponse:
        await self._run(self._catalog.delete, _required_id(request.name, "name"))
        self._catalog_changed()
        return pb.DeleteEventTypeResponse()

    # -- events and deliveries ------------------------------------------------------

    @rpc(WRITE)
    async def PublishEvent(
        self, request: pb.PublishEventRequest, principal: Principal
    ) -> pb.PublishEventResponse:
        if len(request.ordering_key) > MAX_KEY:
            raise invalid("ordering_key", f"must be at most {MAX_KEY} characters", "FIELD_TOO_LONG")
        try:
            event = event_from_proto(request.event, principal.tenant)
        except EventRejected as rejected:
            raise invalid_event(rejected) from None
        event = replace(event, ordering_key=request.ordering_key)
        topic, partition, offset = await self._deliveries.publish(principal, event)
        return pb.PublishEventResponse(
            event_id=event.id, topic=topic, partition=partition, offset=offset
        )

    @rpc(WRITE)
    async def SendTestEvent(
        self, request: pb.SendTestEventRequest, principal: Principal
    ) -> pb.SendTestEventResponse:
        subscription_id = _required_id(request.subscription_id, "subscription_id")
        view = await self._deliveries.send_test(principal, subscription_id, request.event_type)
        return pb.SendTestEventResponse(delivery=convert.delivery_to_pb(view))

    @rpc(READ)
    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, principal: Principal
    ) -> pb.ListDeliveriesResponse:
        size = pagination.page_size(request.page_size)
        where = convert.delivery_filter_from_pb(request)
        query = pagination.query_fingerprint("deliveries", principal.tenant, where)
        after = pagination.decode_token(request.page_token, query)
        skip = pagination.skip(request.skip)
        views, more = await self._deliveries.list_page(principal, where, after, size, skip)
        return pb.ListDeliveriesResponse(
            deliveries=[convert.delivery_to_pb(v) for v in views],
            next_page_token=pagination.encode_token(views[-1].id, query) if more else "",
        )

    @rpc(READ)
    async def GetDelivery(
        self, request: pb.GetDeliveryRequest, principal: Principal
    ) -> pb.GetDeliveryResponse:
        view = await self._deliveries.get(principal, _required_id(request.id))
        return pb.GetDeliveryResponse(delivery=convert.delivery_to_pb(view))

    @rpc(WRITE)
    async def RetryDelivery(
        self, request: pb.RetryDeliveryRequest, principal: Principal
    ) -> pb.RetryDeliveryResponse:
        view = await self._deliveries.retry(principal, _required_id(request.id))
        return pb.RetryDeliveryResponse(delivery=convert.delivery_to_pb(view))

    @rpc(WRITE)
    async def ReleaseDelivery(
        self, request: pb.ReleaseDeliveryRequest, principal: Principal
    ) -> pb.ReleaseDeliveryResponse:
        view = await self._deliveries.release(principal, _required_id(request.id))
        return pb.ReleaseDeliveryResponse(delivery=convert.delivery_to_pb(view))

    @rpc(WRITE)
    async def RecoverDeliveries(
        self, request: pb.RecoverDeliveriesRequest, principal: Principal
    ) -> pb.RecoverDeliveriesResponse:
        subscription_id = _required_id(request.subscription_id, "subscription_id")
        window = convert.time_window(request)
        statuses = convert.recover_statuses(request.statuses)
        count = await self._deliveries.recover(principal, subscription_id, window, statuses)
        return pb.RecoverDeliveriesResponse(queued_count=count)

    @rpc(WRITE)
    async def ReplayEvents(
        self, request: pb.ReplayEventsRequest, principal: Principal
    ) -> pb.ReplayEventsResponse:
        subscription_id = _required_id(request.subscription_id, "subscription_id")
        window = convert.time_window(request)
        if request.event_type and not (
            event_patterns.is_valid_name(request.event_type)
            or event_patterns.is_valid_pattern(request.event_type)
        ):
            raise invalid(
                "event_type", "must be an event type, `*` or `prefix.*`", "MALFORMED_EVENT_TYPES"
            )
        if len(request.request_id) > MAX_REQUEST_ID:
            raise invalid(
                "request_id", f"must be at most {MAX_REQUEST_ID} characters", "FIELD_TOO_LONG"
            )
        fingerprint = _fingerprint(request, principal) if request.request_id else ""
        count = await self._deliveries.replay(
            principal,
            subscription_id,
            window,
            request.event_type,
            (request.request_id, fingerprint),
        )
        return pb.ReplayEventsResponse(queued_count=count)


def _required_id(value: str, field: str = "id") -> str:
    if not value:
        raise invalid(field, "is required", "FIELD_REQUIRED")
    if len(value) > 255:
        raise invalid(field, "must be at most 255 characters", "FIELD_TOO_LONG")
    return value
