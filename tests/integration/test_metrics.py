"""Prometheus metrics scraped over HTTP after real traffic show the counts that happened;
the logs of that traffic carry ids and never a secret or an API key."""

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.app import App
from service.config import Settings
from service.errors import StartupError
from service.logs import JsonFormatter
from tests.pipeline_support import (
    Broker,
    Pipeline,
    Receiver,
    Reply,
    audit_records,
    cloud_event,
    structured,
)
from tests.support import KEYS, Api, Samples, base_env, expect_error, scrape, value
from webhooks.v1 import events_pb2
from webhooks.v1 import webhook_service_pb2 as pb

AUDITED = "webhooks_audit_records_total"


def wait_until(api: Api, check: Callable[[Samples], bool], timeout: float = 15.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(api)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.fixture
def captured_logs() -> Any:
    """Every log line the service writes during the test, formatted as in production."""
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    handler = Capture(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_metrics_count_what_happened(
    make_pipeline: Any, receiver: Receiver, captured_logs: list[str]
) -> None:
    pipeline: Pipeline = make_pipeline(WEBHOOKS_METRICS_INTERVAL_SECONDS="0.2")
    api = pipeline.api
    good = api.create(url=receiver.url("/good"), event_types=["person.created"])
    flaky = api.create(url=receiver.url("/flaky"), event_types=["invoice.paid"])
    receiver.reply("/good", Reply(200))
    receiver.reply("/flaky", Reply(500), Reply(200))
    pipeline.send(
        structured(cloud_event("person.created", {"n": 1})),
        structured(cloud_event("person.created", {"n": 2})),
        structured(cloud_event("invoice.paid", {"n": 3})),
        structured(cloud_event("no.such.type", {})),
        (None, b"not json", [("content-type", b"application/cloudevents+json")]),
    )
    receiver.wait_for("/good", 2)
    receiver.wait_for("/flaky", 2)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        api.call,
        "GetSubscription",
        pb.GetSubscriptionRequest(id="sub_missing"),
    )

    samples = wait_until(
        api,
        lambda s: (
            value(s, "webhooks_deliveries_finished_total", outcome="succeeded") >= 3
            and value(s, "webhooks_audit_outbox_backlog") == 0
            and value(s, "webhooks_pending_deliveries") == 0
        ),
    )
    assert value(samples, "webhooks_events_consumed_total", outcome="accepted", reason="") == 3
    assert (
        value(
            samples,
            "webhooks_events_consumed_total",
            outcome="dead_lettered",
            reason="UNKNOWN_EVENT_TYPE",
        )
        == 1
    )
    assert (
        sum(
            v
            for (name, labels), v in samples.items()
            if name == "webhooks_events_consumed_total" and ("outcome", "dead_lettered") in labels
        )
        == 2
    )
    assert value(samples, "webhooks_deliveries_created_total") == 3
    assert value(samples, "webhooks_deliveries_finished_total", outcome="succeeded") == 3
    assert value(samples, "webhooks_deliveries_finished_total", outcome="failed") == 0
    attempts = "webhooks_delivery_attempts_total"
    assert value(samples, attempts, outcome="succeeded", status_class="2xx") == 3
    assert value(samples, attempts, outcome="retry_scheduled", status_class="5xx") == 1
    assert value(samples, "webhooks_delivery_attempt_duration_seconds_count") == 4
    assert value(samples, "webhooks_event_to_delivery_seconds_count") == 3
    lag = [
        v
        for (name, labels), v in samples.items()
        if name == "webhooks_consumer_lag" and ("topic", pipeline.topic) in labels
    ]
    assert lag and set(lag) == {0.0}  # one gauge per partition that had records
    rpcs = "webhooks_grpc_server_handled_total"
    assert value(samples, rpcs, method="CreateSubscription", code="OK") == 2
    assert value(samples, rpcs, method="GetSubscription", code="NOT_FOUND") == 1
    assert value(samples, "webhooks_grpc_server_handling_seconds_count", method="GetSubscription")

    log_text = "\n".join(captured_logs)
    assert '"subscription_id"' in log_text and '"delivery_id"' in log_text
    assert '"event_id"' in log_text
    for secret in (good.secret, flaky.secret, *KEYS.values()):
        assert secret not in log_text
        assert secret.removeprefix("whsec_") not in log_text


def test_pending_gauge_counts_waiting_retries(make_pipeline: Any, receiver: Receiver) -> None:
    pipeline: Pipeline = make_pipeline(
        WEBHOOKS_METRICS_INTERVAL_SECONDS="0.2", WEBHOOKS_RETRY_SCHEDULE="60"
    )
    pipeline.api.create(url=receiver.url("/down"), event_types=["person.created"])
    receiver.reply("/down", Reply(503))
    pipeline.send(*(structured(cloud_event("person.created", {"n": n})) for n in range(3)))
    retried = {"outcome": "retry_scheduled", "status_class": "5xx"}
    # Pending before their first attempt too: wait for the attempts as well.
    samples = wait_until(
        pipeline.api,
        lambda s: (
            value(s, "webhooks_pending_deliveries") == 3
            and value(s, "webhooks_delivery_attempts_total", **retried) == 3
        ),
    )
    assert value(samples, "webhooks_pending_deliveries") == 3
    assert value(samples, "webhooks_delivery_attempts_total", **retried) == 3


def test_metrics_off_and_taken_port(make_server: Any, tmp_path: Path, database_url: str) -> None:
    off: Api = make_server(WEBHOOKS_METRICS_ADDRESS="off")
    assert off.app is not None and off.app.metrics_port is None
    on: Api = make_server()
    assert on.app is not None and on.app.metrics_port
    taken = f"127.0.0.1:{on.app.metrics_port}"
    clash = App(Settings.from_env(base_env(tmp_path, database_url) | {_METRICS: taken}))

    async def start_and_stop() -> None:
        try:
            await clash.start()
        finally:
            await clash.stop()

    with pytest.raises(StartupError, match=f"{_METRICS} {taken}: Address already in use"):
        asyncio.run(start_and_stop())


_METRICS = "WEBHOOKS_METRICS_ADDRESS"


def test_audit_records_go_straight_to_kafka_and_through_the_outbox_while_it_is_away(
    make_pipeline: Any, broker: Broker, receiver: Receiver
) -> None:
    pipeline: Pipeline = make_pipeline(WEBHOOKS_RETRY_SCHEDULE="2")
    api = pipeline.api
    api.create(url=receiver.url("/audited"), event_types=["person.created"])
    receiver.reply("/audited", Reply(500), Reply(200))
    pipeline.send(structured(cloud_event("person.created", {"n": 1})))
    [first] = receiver.wait_for("/audited", 1)
    delivery_id = first.headers["webhook-id"]
    assert len(audit_records(pipeline.bootstrap, {delivery_id}, 1)) == 1
    samples = wait_until(api, lambda s: value(s, AUDITED, path="direct") == 1)
    assert (
        value(samples, AUDITED, path="direct") == 1 and value(samples, AUDITED, path="outbox") == 0
    )
    broker.pause()  # the retry, two seconds later, is made while the broker does not answer
    try:
        pipeline.wait_status(delivery_id, events_pb2.DELIVERY_STATUS_SUCCEEDED)
        samples = scrape(api)
        assert value(samples, AUDITED, path="outbox") == 1  # stored after the ack's wait ran out
        assert value(samples, AUDITED, path="direct") == 1
    finally:
        broker.resume()
    audits = audit_records(pipeline.bootstrap, {delivery_id}, 2, timeout=30)
    # The direct send still in flight is acked once the broker is back, so the second
    # attempt may be on the topic twice (audit records are at least once, by attempt id).
    assert {a.attempt_number for a in audits} == {1, 2}
    assert len({a.attempt_id for a in audits}) == 2
