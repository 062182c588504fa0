"""Payload filters (service.domain.filters): what a CEL expression makes of an event, which
expressions are refused and where the error points, and fan-out with filters."""

from datetime import UTC, datetime

import pytest

from service.domain import fan_out, filters
from service.domain.filters import Verdict
from service.domain.models import Event

EVENT = Event(
    id="evt_1",
    type="invoice.paid",
    tenant="acme",
    time=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
    data=(
        b'{"amount": 250, "currency": "EUR", "customer": {"tier": "gold"},'
        b' "lines": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}], "note": null,'
        b' "huge": 123456789012345678901234567890}'
    ),
    source="billing",
    subject="inv_7",
)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("data.amount > 100", Verdict.PASSED),
        ("data.amount > 100.5 && data.currency in ['EUR', 'USD']", Verdict.PASSED),
        ("data.amount < 100", Verdict.REFUSED),
        ('event.type.startsWith("invoice.")', Verdict.PASSED),
        ('event.type == "invoice.voided"', Verdict.REFUSED),
        ('event.source == "billing" && event.subject == "inv_7"', Verdict.PASSED),
        ('event.tenant == "acme" && event.id == "evt_1"', Verdict.PASSED),
        ('event.time > timestamp("2026-01-01T00:00:00Z")', Verdict.PASSED),
        ('event.time < timestamp("2026-01-01T00:00:00Z")', Verdict.REFUSED),
        ('data.customer.tier == "gold"', Verdict.PASSED),
        ('data.lines.exists(l, l.sku == "b" && l.qty == 1)', Verdict.PASSED),
        ("data.lines.all(l, l.qty > 1)", Verdict.REFUSED),
        ("size(data.lines) == 2", Verdict.PASSED),
        ("data.note == null", Verdict.PASSED),
        ('data.currency.matches("^E")', Verdict.PASSED),
        # A field the event lacks fails the evaluation (refused); has() tests for it.
        ("data.missing == 1", Verdict.FAILED),
        ("!has(data.missing)", Verdict.PASSED),
        ("has(data.missing) && data.missing == 1", Verdict.REFUSED),
        # Dynamic values that are not bools, and type errors at evaluation.
        ("data.amount", Verdict.FAILED),
        ("data.currency > 1", Verdict.FAILED),
        ("data.amount / 0 == 1", Verdict.FAILED),
    ],
)
def test_a_filter_passes_refuses_or_fails_an_event(text: str, verdict: Verdict) -> None:
    assert filters.EventView(EVENT).verdict(filters.compiled(text)) is verdict


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data.amount >", "1:14: Syntax error"),
        ("event.typo == 1", "1:6: undefined field 'typo'"),
        ("evnt.type == 'a'", "1:5: undeclared reference to 'evnt.type'"),
        ("data.amount +", "1:14: Syntax error"),
        ("'a' + 1 == 'a1'", "found no matching overload"),
        ("1 + 1", "must be a bool expression, not int"),
        ('event.type + "x"', "must be a bool expression, not string"),
        (
            "event.type == 'a' &&\n  data.lines.exists(l, l.sku == data.currency)",
            "2:33: a comprehension's body may use only its own variable",
        ),
        ("data.lines.all(l, event.id == l.sku)", "1:19: a comprehension's body"),
        ("x" * 4097, "must be at most 4096 characters"),
    ],
)
def test_an_invalid_filter_is_refused_with_where(text: str, expected: str) -> None:
    (violation,) = filters.violations(text)
    assert violation.field == "subscription.filter"
    assert violation.reason == "INVALID_FILTER"
    assert expected in violation.description


@pytest.mark.parametrize(
    "text",
    [
        "",
        'data.lines.exists(l, l.sku == "data")',  # names in strings are not variables
        "data.lines.exists(l, l.data == 1)",  # a field named data is the element's
        "data.lines.map(l, l.qty).exists(q, q > 1) && data.amount > 1",
        "data.lines.exists(l, l.parts.exists(p, p == 'x'))",  # nested over the element
    ],
)
def test_valid_filters_have_no_violations(text: str) -> None:
    assert filters.violations(text) == []


def test_a_stored_filter_invalid_under_new_rules_refuses_every_event() -> None:
    rule = filters.stored("data.lines.all(l, l.sku == data.currency)")
    assert rule is not None
    assert filters.EventView(EVENT).verdict(rule) is Verdict.REFUSED
    assert filters.stored("") is None


def test_fan_out_skips_refused_pairs_and_counts_them() -> None:
    def matcher(name: str, text: str) -> fan_out.Matcher:
        return fan_out.Matcher(name, (), frozenset(), filter=filters.stored(text))

    subs = {
        "acme": [
            matcher("all", ""),
            matcher("big", "data.amount > 100"),
            matcher("small", "data.amount < 100"),
            matcher("broken", "data.missing == 1"),
        ]
    }
    cheap = Event("evt_2", "invoice.paid", "acme", EVENT.time, b'{"amount": 5}')
    plan = fan_out.plan_jobs([EVENT, cheap], subs, {}, lease_until=10.0)
    assert [fan_out.pair(j) for j in plan.jobs] == [
        ("acme", "evt_1", "all"),
        ("acme", "evt_1", "big"),
        ("acme", "evt_2", "all"),
        ("acme", "evt_2", "small"),
    ]
    assert (plan.refused, plan.failed) == (2, 2)
    # A pair planned before (sent ahead) keeps its job whatever the filter says now.
    ahead = {fan_out.pair(plan.jobs[1]): plan.jobs[1]}
    subs["acme"][1] = matcher("big", "false")
    again = fan_out.plan_jobs([EVENT], subs, {}, lease_until=10.0, planned=ahead)
    assert plan.jobs[1] in again.jobs


@pytest.mark.parametrize("moment", [datetime(2026, 3, 1, 12), datetime(2026, 3, 1, 12, tzinfo=UTC)])
def test_event_time_is_the_same_instant_naive_utc_or_aware(moment: datetime) -> None:
    event = Event("e", "invoice.paid", "acme", moment, b"{}")
    rule = filters.compiled('event.time == timestamp("2026-03-01T12:00:00Z")')
    assert filters.EventView(event).verdict(rule) is Verdict.PASSED
