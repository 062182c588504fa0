"""What a batch of attempts writes to its subscriptions, and which writes wait to be
coalesced: state changes go at once, a moved last delivery at most once a second."""

from datetime import datetime

import pytest

from service.domain.models import DisabledReason
from service.domain.outcomes import ErrorKind, Outcome, Trigger
from service.domain.pipeline import AttemptRecord, RecordedAttempt
from service.domain.subscription_marks import Mark, marks_of, write_now
from service.engine.coalesced_marks import CoalescedMarks

NOW = datetime(2026, 12, 6, 12, 0)
OK, FAIL = Outcome.SUCCEEDED, Outcome.RETRY_SCHEDULED


def _item(
    subscription: str,
    outcome: Outcome,
    *,
    test: bool = False,
    disable: DisabledReason | None = None,
) -> RecordedAttempt:
    record = AttemptRecord(
        attempt_id="att",
        delivery_id="msg",
        subscription_id=subscription,
        event_id="evt",
        tenant="t",
        event_type="a.b",
        attempt_number=1,
        url="https://x",
        trigger=Trigger.SCHEDULED,
        attempt_time=NOW,
        latency_ms=1,
        http_status=200 if outcome == OK else 500,
        error_kind=ErrorKind.NONE,
        error_message="",
        response_body="",
        outcome=outcome,
        next_attempt_time=None,
        test=test,
    )
    return RecordedAttempt(record, disable, "audit", b"v")


@pytest.mark.parametrize(
    ("outcomes", "cleared", "failing_since", "mixed"),
    [
        ([OK], True, None, False),
        ([FAIL, FAIL], False, None, False),  # failing since whenever it started
        ([OK, FAIL], False, NOW, True),  # failing again since this batch
        ([FAIL, OK], True, None, True),
    ],
)
def test_the_last_attempt_decides(
    outcomes: list[Outcome], cleared: bool, failing_since: datetime | None, mixed: bool
) -> None:
    (mark,) = marks_of([_item("sub_1", o) for o in outcomes], NOW)
    assert (mark.cleared, mark.failing_since, mark.mixed) == (cleared, failing_since, mixed)
    assert mark.status == (200 if outcomes[-1] == OK else 500)


def test_test_attempts_mark_nothing_and_a_disabling_decision_holds() -> None:
    marks = marks_of(
        [
            _item("sub_1", OK, test=True),
            _item("sub_2", FAIL, disable=DisabledReason.ENDPOINT_FAILING),
            _item("sub_2", FAIL),
        ],
        NOW,
    )
    assert [(m.subscription_id, m.disable) for m in marks] == [
        ("sub_2", DisabledReason.ENDPOINT_FAILING)
    ]


def _mark(cleared: bool, *, mixed: bool = False, disable: DisabledReason | None = None) -> Mark:
    return Mark("sub_1", "t", NOW, 200, cleared, None, disable, mixed)


@pytest.mark.parametrize(
    ("mark", "last", "now", "expected"),
    [
        (_mark(True), None, 10.0, True),  # never written by this instance
        (_mark(True), (9.5, True), 10.0, False),  # nothing but the last delivery moved
        (_mark(True), (9.0, True), 10.0, True),  # a second since the last write
        (_mark(False), (9.9, True), 10.0, True),  # started failing
        (_mark(True), (9.9, False), 10.0, True),  # recovered
        (_mark(False, mixed=True), (9.9, False), 10.0, True),  # failing again since now
        (_mark(False, disable=DisabledReason.ENDPOINT_FAILING), (9.9, False), 10.0, True),
    ],
)
def test_only_a_moved_last_delivery_waits(
    mark: Mark, last: tuple[float, bool] | None, now: float, expected: bool
) -> None:
    assert write_now(mark, last, now) is expected


def test_waiting_marks_are_written_a_second_after_the_last_write() -> None:
    marks = CoalescedMarks()
    assert [m.cleared for m in marks.take([_item("sub_1", OK)], NOW, 0.0)] == [True]
    assert marks.take([_item("sub_1", OK)], NOW, 0.2) == []  # waits
    assert marks.take([_item("sub_1", OK)], NOW, 0.4) == []  # replaces the waiting one
    assert marks.waiting and marks.due(0.9) == []
    (due,) = marks.due(1.0)
    assert due.cleared and not marks.waiting
    # A change of state goes at once and supersedes what waited.
    assert marks.take([_item("sub_1", OK)], NOW, 1.1) == []
    assert [m.cleared for m in marks.take([_item("sub_1", FAIL)], NOW, 1.2)] == [False]
    assert not marks.waiting
    # A failed write puts them back; everything is written at stop.
    assert marks.take([_item("sub_1", FAIL)], NOW, 1.3) == []
    (left,) = marks.due(1.4, everything=True)
    marks.put_back([left])
    assert marks.waiting
