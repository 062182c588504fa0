"""The producer's pure parts: key partitioning and the audit record's encoding."""

from datetime import datetime

import pytest
from aiokafka.partitioner import DefaultPartitioner

from kafka.codec import encode_attempt
from kafka.producer import KeyedPartitioner
from service.domain.outcomes import ErrorKind, Outcome, Trigger
from service.domain.pipeline import AttemptRecord
from webhooks.v1 import events_pb2


@pytest.mark.parametrize(
    ("key", "partitions"),
    [
        (b"sub_01J0000000000000000000000", 1),
        (b"sub_01J0000000000000000000000", 3),
        (b"sub_01J0000000000000000000001", 6),
        (b"", 12),
        (b"\xff" * 40, 7),
    ],
)
def test_keyed_partitioner_agrees_with_kafkas_hash(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    cached = KeyedPartitioner()
    expected = DefaultPartitioner()(key, every, every)
    assert cached(key, every, every) == expected
    assert cached(key, every, every) == expected  # the remembered answer
    grown = [*every, partitions]  # a topic that gained a partition hashes anew
    assert cached(key, grown, every) == DefaultPartitioner()(key, grown, every)


@pytest.mark.parametrize(
    ("attempt_time", "next_time"),
    [
        (datetime(2026, 11, 23, 10, 0, 0, 123456), None),
        (datetime(1970, 1, 1), datetime(2026, 11, 23, 10, 0, 30)),
        (datetime(9999, 12, 31, 23, 59, 59, 999999), datetime(1969, 12, 31, 23, 59, 59, 5)),
    ],
)
def test_audit_record_times_match_protobufs_conversion(
    attempt_time: datetime, next_time: datetime | None
) -> None:
    record = AttemptRecord(
        attempt_id="att_1",
        delivery_id="msg_1",
        subscription_id="sub_1",
        event_id="evt_1",
        tenant="acme",
        event_type="person.created",
        attempt_number=2,
        url="https://example.com/hook",
        trigger=Trigger.SCHEDULED,
        attempt_time=attempt_time,
        latency_ms=12,
        http_status=503,
        error_kind=ErrorKind.HTTP_STATUS,
        error_message="HTTP 503",
        response_body="",
        outcome=Outcome.RETRY_SCHEDULED,
        next_attempt_time=next_time,
        test=False,
    )
    decoded = events_pb2.DeliveryAttempt.FromString(encode_attempt(record))
    assert decoded.attempt_time.ToDatetime() == attempt_time
    assert decoded.HasField("next_attempt_time") == (next_time is not None)
    if next_time is not None:
        assert decoded.next_attempt_time.ToDatetime() == next_time
    assert (decoded.delivery_id, decoded.attempt_number, decoded.http_status) == ("msg_1", 2, 503)
    assert decoded.latency.ToMilliseconds() == 12
