"""webhookctl: the client CLI for people. Manages subscriptions, event types, deliveries and
events over the gRPC API; readable tables by default, --json for scripts."""

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from service.ctl import output
from service.ctl.demo import DemoFailed, run_demo
from webhooks.v1 import events_pb2
from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEV_KEY_FILE = Path(".dev/dev-api-key")  # written by `make run`; used when no key is given
TIMEOUT_SECONDS = 30.0

Stub = pb_grpc.WebhookServiceStub
Command = Callable[[Stub, argparse.Namespace], tuple[Message, str]]


class UsageError(Exception):
    """A flag value the CLI itself cannot use; printed as one line, exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        key = _api_key(args.api_key)
        with _channel(args.address, args.ca_file) as channel:
            stub = pb_grpc.WebhookServiceStub(grpc.intercept_channel(channel, _WithKey(key)))
            command: Command = args.run
            message, text = command(stub, args)
    except UsageError as exc:
        print(f"webhookctl: {exc}", file=sys.stderr)
        return 2
    except DemoFailed as exc:
        print(f"webhookctl: demo failed: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"webhookctl: {output.error_line(exc)}", file=sys.stderr)
        return 1
    print(output.as_json(message) if args.json else text)
    return 0


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _WithKey(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds the API key and a deadline to every call."""

    def __init__(self, key: str) -> None:
        self._metadata = [("authorization", f"Bearer {key}")]

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(
            _CallDetails(
                details.method,
                details.timeout or TIMEOUT_SECONDS,
                [*(details.metadata or []), *self._metadata],
                details.credentials,
                details.wait_for_ready,
                details.compression,
            ),
            request,
        )


def _api_key(flag: str | None) -> str:
    key = flag or os.environ.get("WEBHOOKCTL_API_KEY", "")
    if not key and DEV_KEY_FILE.is_file():
        key = DEV_KEY_FILE.read_text().strip()
    if not key:
        raise UsageError("no API key: pass --api-key or set WEBHOOKCTL_API_KEY")
    return key


def _channel(address: str, ca_file: str | None) -> grpc.Channel:
    if not ca_file:
        return grpc.insecure_channel(address)
    try:
        roots = Path(ca_file).read_bytes()
    except OSError as exc:
        raise UsageError(f"--ca-file: {exc.strerror}: {ca_file}") from None
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots))


# --- subscriptions -----------------------------------------------------------------------


def _subscription_rows(items: Sequence[pb.Subscription]) -> str:
    return output.table(
        ["ID", "NAME", "URL", "EVENT TYPES", "ENABLED", "LAST DELIVERY", "STATUS"],
        [
            [
                s.id,
                s.name,
                s.url,
                list(s.event_types) or "*",
                _enabled(s),
                output.when(s.last_delivery_time),
                s.last_delivery_status or "",
            ]
            for s in items
        ],
    )


def _enabled(s: pb.Subscription) -> str:
    if s.enabled:
        return "yes"
    reason = pb.DisabledReason.Name(s.disabled_reason)
    return "no (" + output.enum_name(reason, "DISABLED_REASON_") + ")"


def _subscription_text(s: pb.Subscription, secret: str = "") -> str:
    pairs: list[tuple[str, object]] = [
        ("id", s.id),
        ("name", s.name),
        ("description", s.description),
        ("url", s.url),
        ("event types", list(s.event_types) or "* (all)"),
        ("enabled", _enabled(s)),
        ("headers", [f"{k}={v}" for k, v in sorted(s.headers.items())]),
        ("visible headers", list(s.visible_headers)),
        ("rate limit/s", s.rate_limit_per_second or "default"),
        ("payload", _payload_text(s)),
        ("filter", s.filter or "none"),
        (
            "ordering",
            output.enum_name(pb.Ordering.Name(s.ordering or pb.ORDERING_NONE), "ORDERING_"),
        ),
        ("secret prefix", s.secret_prefix),
        ("created", output.when(s.create_time)),
        ("updated", output.when(s.update_time)),
        ("last delivery", output.when(s.last_delivery_time)),
        ("last status", s.last_delivery_status or ""),
    ]
    if s.HasField("previous_secret_expire_time"):
        pairs.append(("old secret until", output.when(s.previous_secret_expire_time)))
    if secret:
        pairs.append(("secret", f"{secret}  (shown once: keep it for verifying signatures)"))
    return output.fields(pairs)


def _payload_text(s: pb.Subscription) -> str:
    name = (
        pb.PayloadFormat.Name(s.payload_format) if s.payload_format else "PAYLOAD_FORMAT_ENVELOPE"
    )
    kind = output.enum_name(name, "PAYLOAD_FORMAT_")
    return f"{kind} {s.payload_template}" if s.payload_template else kind


def _secret_proof(args: argparse.Namespace) -> str:
    """From the flag, else the environment (a secret on a command line is in `ps` output)."""
    return str(args.secret_proof or os.environ.get("WEBHOOKCTL_SECRET_PROOF", ""))


def _headers(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--header {item!r} must be NAME=VALUE")
        out[name] = value
    return out


PAYLOAD_FORMATS = {
    "envelope": pb.PAYLOAD_FORMAT_ENVELOPE,
    "cloudevents": pb.PAYLOAD_FORMAT_CLOUDEVENTS,
    "data": pb.PAYLOAD_FORMAT_DATA,
    "template": pb.PAYLOAD_FORMAT_TEMPLATE,
}


ORDERINGS = {
    "none": pb.ORDERING_NONE,
    "per-key": pb.ORDERING_PER_KEY,
    "per-key-hold": pb.ORDERING_PER_KEY_HOLD,
}


def _subscription_from_flags(args: argparse.Namespace) -> tuple[pb.Subscription, list[str]]:
    """The subscription the flags describe and the field paths they set (the update mask)."""
    s = pb.Subscription()
    paths = []
    for flag, path in (("name", "name"), ("url", "url"), ("description", "description")):
        value = getattr(args, flag)
        if value is not None:
            setattr(s, path, value)
            paths.append(path)
    if args.event_type is not None:
        s.event_types.extend(args.event_type)
        paths.append("event_types")
    if args.header is not None:
        s.headers.update(_headers(args.header))
        paths.append("headers")
    if args.visible_header is not None:
        s.visible_headers.extend(args.visible_header)
        paths.append("visible_headers")
    if args.rate_limit is not None:
        s.rate_limit_per_second = args.rate_limit
        paths.append("rate_limit_per_second")
    if args.enabled is not None:
        s.enabled = args.enabled
        paths.append("enabled")
    if args.payload_format is not None:
        s.payload_format = PAYLOAD_FORMATS[args.payload_format]
        paths.append("payload_format")
    if args.payload_template is not None:
        s.payload_template = args.payload_template
        paths.append("payload_template")
    if args.filter is not None:
        s.filter = args.filter
        paths.append("filter")
    if args.ordering is not None:
        s.ordering = ORDERINGS[args.ordering]
        paths.append("ordering")
    return s, paths


def subscriptions_create(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    subscription, _ = _subscription_from_flags(args)
    reply = stub.CreateSubscription(
        pb.CreateSubscriptionRequest(
            subscription=subscription,
            request_id=args.request_id or str(uuid.uuid4()),
            verify_endpoint=args.verify,
        )
    )
    return reply, _subscription_text(reply.subscription, reply.secret)


def subscriptions_list(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    reply = stub.ListSubscriptions(
        pb.ListSubscriptionsRequest(
            page_size=args.page_size, page_token=args.page_token, skip=args.skip
        )
    )
    return reply, _with_next_page(_subscription_rows(reply.subscriptions), reply.next_page_token)


def subscriptions_get(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    reply = stub.GetSubscription(pb.GetSubscriptionRequest(id=args.id))
    return reply, _subscription_text(reply.subscription)


def subscriptions_update(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    subscription, paths = _subscription_from_flags(args)
    if not paths:
        raise UsageError("nothing to update: give at least one field flag")
    subscription.id = args.id
    reply = stub.UpdateSubscription(
        pb.UpdateSubscriptionRequest(
            subscription=subscription,
            update_mask=field_mask_pb2.FieldMask(paths=paths),
            verify_endpoint=args.verify,
            secret_proof=_secret_proof(args),
        )
    )
    return reply, _subscription_text(reply.subscription)


def subscriptions_delete(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    reply = stub.DeleteSubscription(
        pb.DeleteSubscriptionRequest(id=args.id, secret_proof=_secret_proof(args))
    )
    return reply, f"deleted {args.id}"


def subscriptions_rotate(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    request = pb.RotateSubscriptionSecretRequest(id=args.id, secret_proof=_secret_proof(args))
    if args.overlap is not None:
        request.overlap.CopyFrom(Duration(seconds=args.overlap))
    reply = stub.RotateSubscriptionSecret(request)
    return reply, _subscription_text(reply.subscription, reply.secret)


# --- event types -------------------------------------------------------------------------


def event_types_list(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    reply = stub.ListEventTypes(
        pb.ListEventTypesRequest(
            page_size=args.page_size,
            page_token=args.page_token,
            subscribable_only=args.subscribable_only,
        )
    )
    text = output.table(
        ["NAME", "REQUIRED SCOPE", "DESCRIPTION"],
        [[t.name, t.required_scope, t.description] for t in reply.event_types],
    )
    return reply, _with_next_page(text, reply.next_page_token)


# --- deliveries --------------------------------------------------------------------------

STATUSES = {
    "pending": events_pb2.DELIVERY_STATUS_PENDING,
    "succeeded": events_pb2.DELIVERY_STATUS_SUCCEEDED,
    "failed": events_pb2.DELIVERY_STATUS_FAILED,
}


def _status(value: events_pb2.DeliveryStatus.ValueType) -> str:
    return output.enum_name(events_pb2.DeliveryStatus.Name(value), "DELIVERY_STATUS_")


def _delivery_rows(items: Sequence[pb.Delivery]) -> str:
    return output.table(
        ["ID", "SUBSCRIPTION", "EVENT TYPE", "STATUS", "ATTEMPTS", "HTTP", "MS", "LAST ATTEMPT"],
        [
            [
                d.id,
                d.subscription_id,
                d.event_type + (" (test)" if d.test else ""),
                _status(d.status),
                d.attempt_count,
                d.last_http_status or "",
                d.last_attempt_latency.ToMilliseconds()
                if d.HasField("last_attempt_latency")
                else "",
                output.when(d.last_attempt_time),
            ]
            for d in items
        ],
    )


def _delivery_text(d: pb.Delivery) -> str:
    head = output.fields(
        [
            ("id", d.id),
            ("subscription", d.subscription_id),
            ("event", f"{d.event_id} ({d.event_type})"),
            ("status", _status(d.status) + (" (test)" if d.test else "")),
            ("ordering key", d.ordering_key + (" (held)" if d.holds_key else "")),
            ("attempts", d.attempt_count),
            ("created", output.when(d.create_time)),
            ("next attempt", output.when(d.next_attempt_time)),
        ]
    )
    attempts = output.table(
        ["#", "TIME", "TRIGGER", "HTTP", "LATENCY MS", "ERROR", "OUTCOME"],
        [
            [
                a.attempt_number,
                output.when(a.attempt_time),
                output.enum_name(events_pb2.AttemptTrigger.Name(a.trigger), "ATTEMPT_TRIGGER_"),
                a.http_status or "",
                round(a.latency.ToMilliseconds()),
                _error(a),
                output.enum_name(events_pb2.AttemptOutcome.Name(a.outcome), "ATTEMPT_OUTCOME_"),
            ]
            for a in d.attempts
        ],
    )
    return f"{head}\n\n{attempts}"


def _error(a: pb.Attempt) -> str:
    kind = output.enum_name(events_pb2.ErrorKind.Name(a.error_kind), "ERROR_KIND_")
    return kind if not a.error_message else f"{kind}: {a.error_message}"


def deliveries_list(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    request = pb.ListDeliveriesRequest(
        page_size=args.page_size,
        page_token=args.page_token,
        skip=args.skip,
        subscription_id=args.subscription or "",
        statuses=[STATUSES[s] for s in args.status or []],
        event_type=args.event_type or "",
    )
    if args.since:
        request.start_time.CopyFrom(_timestamp(args.since, "--since"))
    if args.until:
        request.end_time.CopyFrom(_timestamp(args.until, "--until"))
    reply = stub.ListDeliveries(request)
    return reply, _with_next_page(_delivery_rows(reply.deliveries), reply.next_page_token)


def deliveries_get(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    reply = stub.GetDelivery(pb.GetDeliveryRequest(id=args.id))
    return reply, _delivery_text(reply.delivery)


def deliveries_retry(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    reply = stub.RetryDelivery(pb.RetryDeliveryRequest(id=args.id))
    return reply, _delivery_text(reply.delivery)


def deliveries_release(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    reply = stub.ReleaseDelivery(pb.ReleaseDeliveryRequest(id=args.id))
    return reply, _delivery_text(reply.delivery)


def deliveries_recover(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    request = pb.RecoverDeliveriesRequest(
        subscription_id=args.subscription,
        since=_timestamp(args.since, "--since"),
        statuses=[STATUSES[s] for s in args.status or []],
    )
    if args.until:
        request.until.CopyFrom(_timestamp(args.until, "--until"))
    reply = stub.RecoverDeliveries(request)
    which = " or ".join(args.status or ["failed"])
    return reply, f"queued {reply.queued_count} {which} deliveries again"


def events_replay(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    request = pb.ReplayEventsRequest(
        subscription_id=args.subscription,
        since=_timestamp(args.since, "--since"),
        event_type=args.event_type or "",
        request_id=args.request_id or "",
    )
    if args.until:
        request.until.CopyFrom(_timestamp(args.until, "--until"))
    reply = stub.ReplayEvents(request)
    return reply, f"queued {reply.queued_count} events as new deliveries (trigger REPLAY)"


# --- events ------------------------------------------------------------------------------


def events_publish(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--data is not JSON: {exc}") from None
    event = events_pb2.DomainEvent(
        id=args.id or str(uuid.uuid4()),
        type=args.type,
        source=args.source,
        subject=args.subject or "",
        tenant=args.tenant or "",
        data=json.dumps(data, separators=(",", ":")).encode(),
    )
    event.time.GetCurrentTime()
    reply = stub.PublishEvent(
        pb.PublishEventRequest(event=event, ordering_key=args.ordering_key or "")
    )
    return reply, (
        f"published {reply.event_id} to {reply.topic} "
        f"(partition {reply.partition}, offset {reply.offset})"
    )


def test_event_send(stub: Stub, args: argparse.Namespace) -> tuple[Message, str]:
    reply = stub.SendTestEvent(
        pb.SendTestEventRequest(subscription_id=args.subscription, event_type=args.event_type)
    )
    return reply, _delivery_text(reply.delivery)


# --- parsing -----------------------------------------------------------------------------


def _timestamp(value: str, flag: str) -> Timestamp:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _with_next_page(text: str, token: str) -> str:
    return f"{text}\n(more: --page-token {token})" if token else text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webhookctl",
        description=__doc__,
        epilog="Environment: WEBHOOKCTL_ADDRESS, WEBHOOKCTL_API_KEY, WEBHOOKCTL_CA_FILE. "
        f"Without a key, {DEV_KEY_FILE} (written by `make run`) is used if present.",
    )
    parser.add_argument("--address", default=os.environ.get("WEBHOOKCTL_ADDRESS", DEFAULT_ADDRESS))
    parser.add_argument("--api-key", default=None, help="default: $WEBHOOKCTL_API_KEY")
    parser.add_argument(
        "--ca-file",
        default=os.environ.get("WEBHOOKCTL_CA_FILE") or None,
        help="PEM CA bundle; connects with TLS when given",
    )
    parser.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP")

    subs = _group(groups, "subscriptions", "manage webhook subscriptions")
    create = _command(subs, "create", subscriptions_create, "create a subscription")
    _subscription_flags(create, required=True)
    create.add_argument("--request-id", help="idempotency key (default: a new one)")
    _page_flags(_command(subs, "list", subscriptions_list, "list subscriptions"), skip=True)
    _id_arg(_command(subs, "get", subscriptions_get, "show one subscription"))
    update = _command(subs, "update", subscriptions_update, "change the given fields")
    _id_arg(update)
    _subscription_flags(update, required=False)
    delete = _command(subs, "delete", subscriptions_delete, "delete a subscription")
    _id_arg(delete)
    rotate = _command(subs, "rotate-secret", subscriptions_rotate, "issue a new signing secret")
    _id_arg(rotate)
    for proved in (update, delete, rotate):
        proved.add_argument(
            "--secret-proof",
            help="the current signing secret, as proof (default: $WEBHOOKCTL_SECRET_PROOF)",
        )
    rotate.add_argument(
        "--overlap", type=int, help="seconds the old secret keeps signing (default 86400)"
    )

    types = _group(groups, "event-types", "the event type catalog")
    listing = _command(types, "list", event_types_list, "list event types")
    _page_flags(listing)
    listing.add_argument("--subscribable-only", action="store_true")

    deliveries = _group(groups, "deliveries", "delivery history and retries")
    listing = _command(deliveries, "list", deliveries_list, "list deliveries, newest first")
    _page_flags(listing, skip=True)
    listing.add_argument("--subscription")
    listing.add_argument("--status", action="append", choices=sorted(STATUSES))
    listing.add_argument("--event-type")
    listing.add_argument("--since", help="ISO 8601 time")
    listing.add_argument("--until", help="ISO 8601 time")
    _id_arg(_command(deliveries, "get", deliveries_get, "show a delivery and its attempts"))
    _id_arg(_command(deliveries, "retry", deliveries_retry, "attempt a delivery again now"))
    _id_arg(
        _command(
            deliveries,
            "release",
            deliveries_release,
            "let the ordering key a FAILED delivery holds go on",
        )
    )
    recover = _command(
        deliveries,
        "recover",
        deliveries_recover,
        "queue finished deliveries of a time window again",
    )
    recover.add_argument("--subscription", required=True)
    recover.add_argument("--since", required=True, help="ISO 8601 time (created at or after)")
    recover.add_argument("--until", help="ISO 8601 time (created before; default now)")
    recover.add_argument(
        "--status", action="append", choices=["failed", "succeeded"], help="default: failed"
    )

    events = _group(groups, "events", "publish domain events, replay stored ones")
    publish = _command(events, "publish", events_publish, "publish an event to the ingest topic")
    publish.add_argument("--type", required=True)
    publish.add_argument("--data", default="{}", help="JSON payload")
    publish.add_argument("--id", help="event id (default: a new UUID)")
    publish.add_argument("--tenant", help="default: the caller's tenant")
    publish.add_argument("--source", default="webhookctl")
    publish.add_argument("--subject")
    publish.add_argument("--ordering-key", help="record key: events of one key keep order")
    replay = _command(
        events, "replay", events_replay, "send stored events to a subscription again (backfill)"
    )
    replay.add_argument("--subscription", required=True)
    replay.add_argument("--since", required=True, help="ISO 8601 time (received at or after)")
    replay.add_argument("--until", help="ISO 8601 time (received before; default now)")
    replay.add_argument("--event-type", help="a type or pattern narrowing the events")
    replay.add_argument("--request-id", help="makes a retry of the call safe")

    test = _group(groups, "test-event", "send a test event")
    send = _command(test, "send", test_event_send, "deliver the type's example now")
    send.add_argument("subscription")
    send.add_argument("--event-type", default="", help="default: the subscription's first type")

    demo = groups.add_parser(
        "demo", help="local receiver + subscription + published events, end to end"
    )
    demo.set_defaults(run=run_demo)
    demo.add_argument("--event-type", default="person.created")
    demo.add_argument("--count", type=int, default=3, help="events to publish")
    demo.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    demo.add_argument("--keep", action="store_true", help="keep the demo subscription")
    return parser


def _group(groups: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, help: str):  # type: ignore[no-untyped-def]
    return groups.add_parser(name, help=help).add_subparsers(
        dest="command", required=True, metavar="COMMAND"
    )


def _command(
    group: "argparse._SubParsersAction[argparse.ArgumentParser]",
    name: str,
    run: Command,
    help: str,
) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help)
    parser.set_defaults(run=run)
    return parser


def _id_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id")


def _page_flags(parser: argparse.ArgumentParser, skip: bool = False) -> None:
    parser.add_argument("--page-size", type=int, default=0, help="default 50, at most 100")
    parser.add_argument("--page-token", default="")
    if skip:
        parser.add_argument("--skip", type=int, default=0, help="results to pass over first")


def _subscription_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--name", required=required)
    parser.add_argument("--url", required=required)
    parser.add_argument("--description")
    parser.add_argument(
        "--event-type", action="append", help="repeatable: name, prefix.* or * (default: all)"
    )
    parser.add_argument(
        "--header", action="append", help="repeatable NAME=VALUE (write-only unless visible)"
    )
    parser.add_argument(
        "--visible-header",
        action="append",
        help="repeatable NAME: a header whose value is no secret and reads show",
    )
    parser.add_argument("--rate-limit", type=int, help="requests per second")
    parser.add_argument("--payload-format", choices=sorted(PAYLOAD_FORMATS))
    parser.add_argument("--payload-template", help="JSON with {{placeholders}} (see the proto)")
    parser.add_argument(
        "--filter", help="CEL the event must satisfy, e.g. 'data.amount > 100' (\"\" = none)"
    )
    parser.add_argument(
        "--ordering",
        choices=list(ORDERINGS),
        help="one delivery per ordering key at a time, in order; per-key-hold: a FAILED one"
        " holds its key until retried or released",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="ping the endpoint first; refuse unless it answers 2xx",
    )
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_const", const=True)
    state.add_argument("--disable", dest="enabled", action="store_const", const=False)


if __name__ == "__main__":
    sys.exit(main())
