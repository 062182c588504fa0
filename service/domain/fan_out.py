"""Fan-out: which subscriptions an event reaches, and the job each pair makes."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.domain import event_patterns, filters, payloads
from service.domain.ids import derived_id, new_id
from service.domain.models import Event, Payload
from service.domain.outcomes import Trigger
from service.domain.pipeline import Job

# (tenant, event id, subscription id): one delivery at most.
Pair = tuple[str, str, str]


@dataclass(frozen=True)
class Matcher:
    """What matching needs of an enabled subscription."""

    id: str
    event_types: tuple[str, ...]
    granted_scopes: frozenset[str]
    payload: Payload = Payload()
    filter: filters.Filter | None = None
    ordered: bool = False


@dataclass
class Plan:
    """The jobs of a batch, and how many pairs filters kept from being jobs."""

    jobs: list[Job]
    refused: int = 0  # the filter was false
    failed: int = 0  # evaluating the filter failed


def matches(sub: Matcher, event_type: str, scope: str) -> bool:
    """Whether the subscription takes the type; `scope` is the type's subscribe scope."""
    if not event_patterns.subscription_matches(sub.event_types, event_type):
        return False
    # Exact names and patterns alike: a type that gained a scope after the subscription was
    # made reaches it only if its creator held that scope then.
    return not scope or "*" in sub.granted_scopes or scope in sub.granted_scopes


def plan_jobs(
    events: Sequence[Event],
    subscriptions: Mapping[str, Sequence[Matcher]],
    required_scopes: Mapping[str, str],
    lease_until: float,
    planned: Mapping[Pair, Job] | None = None,
) -> Plan:
    """One job per (event, matching subscription) pair whose filter passes the event, each
    pair once even when an event comes twice. A pair found in `planned` keeps that job (its
    id and body): its filter passed the event then."""
    planned = planned or {}
    plan = Plan([])
    # Which subscriptions of a tenant take a type: the same few pairs recur per batch.
    targets: dict[tuple[str, str], list[Matcher]] = {}
    seen: set[tuple[str, str]] = set()
    for event in events:
        if (event.tenant, event.id) in seen:
            continue
        seen.add((event.tenant, event.id))
        key = (event.tenant, event.type)
        if key not in targets:
            scope = required_scopes.get(event.type, "")
            targets[key] = [
                sub
                for sub in subscriptions.get(event.tenant, ())
                if matches(sub, event.type, scope)
            ]
        bodies: dict[Payload, bytes] = {}  # one body per event and format, shared
        view: filters.EventView | None = None
        for sub in targets[key]:
            subscription_id = sub.id
            job = planned.get((event.tenant, event.id, subscription_id))
            if job is None:
                if sub.filter is not None:
                    view = view or filters.EventView(event)
                    verdict = view.verdict(sub.filter)
                    if verdict is not filters.Verdict.PASSED:
                        if verdict is filters.Verdict.REFUSED:
                            plan.refused += 1
                        else:
                            plan.failed += 1
                        continue
                body = bodies.get(sub.payload)
                if body is None:
                    body = bodies[sub.payload] = payloads.render(sub.payload, event)
                job = Job(
                    delivery_id=delivery_id(event, subscription_id),
                    subscription_id=subscription_id,
                    tenant=event.tenant,
                    event_id=event.id,
                    event_type=event.type,
                    body=body,
                    attempts_made=0,
                    trigger=Trigger.SCHEDULED,
                    event_time=event.time,
                    lease_until=lease_until,
                    content_type=sub.payload.content_type,
                    ordering_key=event.ordering_key if sub.ordered else "",
                )
            plan.jobs.append(job)
    return plan


def delivery_id(event: Event, subscription_id: str) -> str:
    """The same for the same Kafka record and subscription: a delivery sent ahead of its
    transaction and lost with the process (SIGKILL before the commit) is sent again, when
    its record is read again, with the same `webhook-id`."""
    if not event.record_time_ms:
        return new_id("msg")
    key = "\0".join((event.tenant, event.id, subscription_id)).encode()
    return derived_id("msg", event.record_time_ms, key)


def pair(job: Job) -> Pair:
    return (job.tenant, job.event_id, job.subscription_id)
