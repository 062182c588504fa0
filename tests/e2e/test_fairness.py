"""Fairness across tenants: a noisy tenant's burst to slow endpoints is more than the
service's capacity holds, yet a quiet tenant's new events reach its fast endpoint within a
second or two while the burst's deliveries are pending: the burst's jobs that cannot get capacity
soon wait aside (parked, and beyond that in the store: tenant_share deferrals), and a freed
slot goes to the quiet tenant first."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kafka.embedded import free_port
from tests.bench import e2e
from tests.pipeline_support import Broker, new_topic, pipeline_env
from tests.support import ServiceProcess, process_env, process_metric

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fairness")]

NOISY, QUIET = "acme", "globex"  # alice's and gina's tenants (tests.support.PRINCIPALS)
NOISY_SUBSCRIPTIONS, NOISY_EVENTS = 5, 2000  # 10,000 deliveries to slow endpoints
CAPACITY = 300  # WEBHOOKS_MAX_IN_FLIGHT: the slow endpoints alone could hold ~1,500


@pytest.fixture
def bench_receiver() -> Iterator[e2e.Receiver]:
    """The benchmark's receiver: /lag answers after ~100 ms (lognormal), /hook at once and
    records each event's produce-to-receipt latency."""
    receiver = e2e.Receiver()
    yield receiver
    receiver.stop()


def test_a_quiet_tenants_events_pass_a_noisy_tenants_backlog_within_a_second(
    tmp_path: Path, broker: Broker, bench_receiver: e2e.Receiver
) -> None:
    topic = new_topic(broker.bootstrap)
    env = process_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'fair.db'}",
        **pipeline_env(broker, topic)
        | {
            "WEBHOOKS_MAX_IN_FLIGHT": str(CAPACITY),
            "WEBHOOKS_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        },
    )
    service = ServiceProcess(env, tmp_path / "service.log")
    url = bench_receiver.url
    try:
        service.start()
        for n in range(NOISY_SUBSCRIPTIONS):
            service.subscribe(f"{url}/lag/{n}", event_types=["person.created"])
        service.subscribe(f"{url}/hook", event_types=["person.created"], as_="gina")
        bootstrap = broker.bootstrap

        def quiet(count: int) -> None:
            plan = [(QUIET, "person.created", 1)] * count
            asyncio.run(e2e.produce_at_rate(bootstrap, topic, plan, 10.0, to_partition=1))

        quiet(5)  # the quiet tenant was active before the burst
        assert e2e.wait_received(bench_receiver, 5, time.monotonic() + 60) == 5
        burst = [e2e.record(NOISY, "person.created", 0.0) for _ in range(NOISY_EVENTS)]
        asyncio.run(e2e.produce_all(bootstrap, topic, burst, to_partition=0))
        bench_receiver.reset(latency=True)
        quiet(20)
        deadline = time.monotonic() + 60
        while len(bench_receiver.stats()["latencies_ms"]) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = bench_receiver.stats()
        deferred = process_metric(
            service, 'webhooks_deliveries_deferred_total{reason="tenant_share"}'
        )
        created = process_metric(service, "webhooks_deliveries_created_total")
    finally:
        service.stop()
    latencies = sorted(stats["latencies_ms"])
    assert len(latencies) == 20, f"{len(latencies)} of 20 quiet events arrived"
    noisy_sent = stats["count"] - 20
    expected = NOISY_SUBSCRIPTIONS * NOISY_EVENTS
    assert noisy_sent < expected / 2, "the noisy backlog was not pending meanwhile"
    # Counted when stored, not when sent: far more than were sent.
    assert created - 25 > 2 * noisy_sent
    assert deferred > 0  # the noisy tenant's excess waited in the store
    # 1 s is the target (make bench: p99 45 ms); this test shares two cores with the parallel
    # suite, so it allows twice that. The dispatcher before tenant shares took 4.3-6.0 s alone.
    assert latencies[-1] <= 2000, f"quiet tenant's latencies (ms): {latencies}"
