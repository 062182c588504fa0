"""Table-driven tests of the delivery rules: signing, retry timing, outcomes, the body."""

import json
from datetime import datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook

from service.domain.envelope import webhook_body
from service.domain.limits import (
    CircuitBreaker,
    TokenBucket,
    backlog_delays,
    crowding,
    lane_limit,
    smoothed,
)
from service.domain.models import DisabledReason
from service.domain.outcomes import AttemptResult, Decision, ErrorKind, Outcome, decide
from service.domain.retry import DEFAULT_SCHEDULE, next_delay, parse_retry_after
from service.domain.signing import secret_key, signature_header
from service.domain.signing_secrets import new_secret

NOW = datetime(2026, 11, 23, 12, 0, 0)


def test_signatures_verify_with_the_standardwebhooks_package_for_every_live_secret() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"id":"e1","data":{"x":1}}'
    timestamp = int(datetime.now().timestamp())
    header = signature_header([secret_key(new), secret_key(old)], "msg_1", timestamp, body)
    assert len(header.split(" ")) == 2 and all(part.startswith("v1,") for part in header.split(" "))
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": header,
    }
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {"id": "e1", "data": {"x": 1}}
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new_secret()).verify(body, headers)


@pytest.mark.parametrize(
    ("attempts", "random", "delay"),
    [
        (1, 0.5, 5.0),
        (2, 0.5, 300.0),
        (7, 0.5, 36000.0),
        (8, 0.5, None),
        (0, 0.5, None),
        (1, 0.0, 4.5),
        (1, 0.999999, 5.5),
    ],
)
def test_next_delay(attempts: int, random: float, delay: float | None) -> None:
    got = next_delay(attempts, DEFAULT_SCHEDULE, 0.1, random)
    assert got == pytest.approx(delay) if delay is not None else got is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Mon, 23 Nov 2026 12:00:30 GMT", 30.0),
        ("Mon, 23 Nov 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def _decide(
    result: AttemptResult,
    attempts: int = 1,
    failing_since: datetime | None = None,
    test: bool = False,
) -> Decision:
    return decide(
        result,
        attempts_made=attempts,
        schedule=(5, 60),
        jitter=0.0,
        random=0.5,
        now=NOW,
        failing_since=failing_since,
        disable_after=timedelta(days=5),
        test=test,
    )


@pytest.mark.parametrize(
    ("result", "attempts", "failing_since", "test", "decision"),
    [
        (AttemptResult(http_status=200), 1, None, False, Decision(Outcome.SUCCEEDED)),
        (
            AttemptResult(http_status=204),
            3,
            NOW - timedelta(days=9),
            False,
            Decision(Outcome.SUCCEEDED),
        ),
        (AttemptResult(http_status=500), 1, None, False, Decision(Outcome.RETRY_SCHEDULED, 5.0)),
        (AttemptResult(http_status=500), 2, None, False, Decision(Outcome.RETRY_SCHEDULED, 60.0)),
        (AttemptResult(http_status=500), 3, None, False, Decision(Outcome.FAILED)),
        (
            AttemptResult(http_status=302, error_kind=ErrorKind.REDIRECT),
            1,
            None,
            False,
            Decision(Outcome.RETRY_SCHEDULED, 5.0),
        ),
        (
            AttemptResult(error_kind=ErrorKind.TIMEOUT),
            1,
            None,
            False,
            Decision(Outcome.RETRY_SCHEDULED, 5.0),
        ),
        (
            AttemptResult(http_status=410),
            1,
            None,
            False,
            Decision(Outcome.FAILED, None, DisabledReason.ENDPOINT_GONE),
        ),
        (
            AttemptResult(http_status=429, retry_after=30),
            1,
            None,
            False,
            Decision(Outcome.RETRY_SCHEDULED, 30.0),
        ),
        (
            AttemptResult(http_status=503, retry_after=9999),
            1,
            None,
            False,
            Decision(Outcome.RETRY_SCHEDULED, 9999.0),
        ),
        (
            AttemptResult(http_status=503, retry_after=10**7),
            1,
            None,
            False,
            Decision(Outcome.RETRY_SCHEDULED, 86400.0),
        ),
        (
            AttemptResult(http_status=429, retry_after=1),
            2,
            None,
            False,
            Decision(Outcome.RETRY_SCHEDULED, 60.0),
        ),
        (
            AttemptResult(http_status=500, retry_after=30),
            1,
            None,
            False,
            Decision(Outcome.RETRY_SCHEDULED, 5.0),
        ),
        (
            AttemptResult(http_status=500),
            1,
            NOW - timedelta(days=5),
            False,
            Decision(Outcome.FAILED, None, DisabledReason.ENDPOINT_FAILING),
        ),
        (
            AttemptResult(http_status=500),
            1,
            NOW - timedelta(days=4),
            False,
            Decision(Outcome.RETRY_SCHEDULED, 5.0),
        ),
        (AttemptResult(http_status=410), 1, None, True, Decision(Outcome.FAILED)),
        (AttemptResult(http_status=500), 1, None, True, Decision(Outcome.FAILED)),
    ],
)
def test_decide(
    result: AttemptResult,
    attempts: int,
    failing_since: datetime | None,
    test: bool,
    decision: Decision,
) -> None:
    assert _decide(result, attempts, failing_since, test) == decision


def test_body_keeps_data_byte_for_byte() -> None:
    data = b'{"amount": 12345678901234567890, "price": 19.90}'
    body = webhook_body("e1", "invoice.paid", NOW, "acme", data)
    assert body.endswith(b',"data":' + data + b"}")
    parsed = json.loads(body)
    assert parsed["id"] == "e1" and parsed["type"] == "invoice.paid" and parsed["tenant"] == "acme"
    assert parsed["timestamp"] == "2026-11-23T12:00:00.000000Z"
    assert parsed["data"]["amount"] == 12345678901234567890 and "test" not in parsed
    assert json.loads(webhook_body("e1", "t", NOW, "acme", b"{}", test=True))["test"] is True


def test_token_bucket_spaces_sends_at_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    waits = [bucket.take(100.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])
    # After a quiet second the burst is available again, and no more.
    assert (
        bucket.take(102.0) == 0.0
        and bucket.take(102.0) == 0.0
        and bucket.take(102.0) == pytest.approx(0.1)
    )


@pytest.mark.parametrize(
    ("outcomes", "threshold", "serial"),
    [
        ([], 5, False),
        ([False], 5, False),  # one failure among successes: noise
        ([False, False], 5, True),  # two in a row: one request at a time
        ([False, False, True], 5, False),  # a success ends it
        ([True, False, True, False], 5, False),
        ([False], 1, True),  # the circuit is open
    ],
)
def test_a_lane_sends_one_at_a_time_after_two_failures_in_a_row(
    outcomes: list[bool], threshold: int, serial: bool
) -> None:
    breaker = CircuitBreaker(threshold=threshold, cooldown=30, max_cooldown=300)
    for n, success in enumerate(outcomes):
        breaker.record(success, float(n))
    assert breaker.serial is serial


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # (time, success or None to ask allow) -> allow answers in order
        ([(0, False), (1, False), (2, None)], [True]),
        (
            [(0, False), (1, False), (2, False), (3, None), (32, None), (33, None)],
            [False, True, False],
        ),
        ([(0, False), (1, False), (2, False), (33, None), (33, True), (34, None)], [True, True]),
        (
            [(0, False), (1, False), (2, False), (33, None), (33, False), (80, None), (94, None)],
            [True, False, True],
        ),
    ],
)
def test_circuit_breaker(events: list[tuple[float, bool | None]], expected: list[bool]) -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=30, max_cooldown=300)
    answers = []
    for now, success in events:
        if success is None:
            answers.append(breaker.allow(now))
        else:
            breaker.record(success, now)
    assert answers == expected


@pytest.mark.parametrize(
    ("concurrency", "latency", "expected"),
    [
        (50, None, 500),  # nothing measured yet: the first limit
        (50, 0.1, 1000),  # 500 sends/s for 2 s
        (50, 0.0, 100_000),  # a sub-millisecond endpoint counts as 1 ms
        (2, 0.5, 8),
        (1, 0.4, 5),
        (50, 15.0, 50),  # timing out: one wave, no fewer
        (1, 30.0, 1),
    ],
)
def test_lane_limit_holds_two_seconds_of_the_endpoints_work(
    concurrency: int, latency: float | None, expected: int
) -> None:
    assert lane_limit(concurrency, latency, 2.0, 500) == expected


@pytest.mark.parametrize(
    ("samples", "expected"),
    [([0.5], 0.5), ([0.0, 1.0], 0.2), ([1.0, 1.0, 1.0], 1.0), ([0.01, 10.0, 0.01], 1.6084)],
)
def test_smoothed_moves_a_fifth_of_the_way_to_each_sample(
    samples: list[float], expected: float
) -> None:
    value = None
    for sample in samples:
        value = smoothed(value, sample)
    assert value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("held", "capacity", "active", "expected"),
    [
        (2000, 2000, 1, False),  # alone: it waits for capacity (backpressure)
        (1500, 2000, 2, True),  # 1.5 x its share of 1,000 while another tenant has work
        (1499, 2000, 2, False),
        (999, 2000, 3, False),  # 1.5 x its share of 667, but less than half
        (1000, 2000, 3, True),
        (999, 2000, 100, False),
        (1000, 2000, 100, True),
        (0, 2000, 5, False),
    ],
)
def test_a_tenant_crowds_others_out_holding_half_and_more_than_its_share(
    held: int, capacity: int, active: int, expected: bool
) -> None:
    assert crowding(held, capacity, active) is expected


@pytest.mark.parametrize(
    ("count", "held", "rate", "free_from", "delays", "until"),
    [
        (3, 0, 10.0, 0.0, [1.0, 1.1, 1.2], 101.3),  # at least a second, then at its pace
        (2, 50, 10.0, 0.0, [5.0, 5.1], 105.2),  # after the 50 it holds
        (2, 0, 10.0, 108.0, [8.0, 8.1], 108.2),  # after those deferred before
        (0, 10, 10.0, 0.0, [], 101.0),
    ],
)
def test_a_backlog_comes_back_at_its_endpoints_pace(
    count: int, held: int, rate: float, free_from: float, delays: list[float], until: float
) -> None:
    got, free = backlog_delays(count, held, rate, free_from, now=100.0)
    assert got == pytest.approx(delays) and free == pytest.approx(until)
