"""The benchmark in miniature (a few hundred events, one run of each part), so it never rots."""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.__main__ import later_events
from tests.postgres_server import URL_VARIABLE

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
@pytest.mark.timeout(420)  # ~120 s alone; its subprocess has the same bound
def test_bench_smoke_runs_every_part_and_reports(tmp_path: Path, postgres_server_url: str) -> None:
    output = tmp_path / "bench.json"
    # Its own session: whatever stops it (a timeout, an interrupt), its brokers and services
    # go too, even those it holds stopped (SIGSTOP) while it measures a reference.
    bench = subprocess.Popen(
        [sys.executable, "-m", "tests.bench", "--smoke", "--output", str(output)],
        cwd=ROOT,
        env={**os.environ, URL_VARIABLE: postgres_server_url},  # the suite's server, not another
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=400)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bench.pid, signal.SIGKILL)
    done = subprocess.CompletedProcess(bench.args, bench.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["ceiling_reference"] > 0 and report["ceiling_own_client"] > 0
    parts = ("sqlite", "sqlite_template", "sqlite_filtered", "sqlite_ordered", "postgres")
    shapes = ("slow_many", "fan_out", "many_stored")
    for part in (*parts, "sqlite_two_workers", "sqlite_apache", *shapes):
        throughput = report[part]["throughput"]
        assert throughput["deliveries"] > throughput["events"] > 0  # fan-out happened
        assert throughput["cpu_us_per_delivery"] > 0
        assert throughput["deliveries_per_s"] > 0 and 0 < report[part]["rss_mb"] < 1000
        # Each run's ratio is against the reference measured just before it.
        assert len(throughput["ratios"]) == len(throughput["references"]) == 1
        assert throughput["ratio"] == throughput["deliveries_per_s"] / throughput["reference"]
    for fairness in ("fairness", "fairness_kafka"):
        assert report[fairness]["quiet_events"] > 0 and report[fairness]["p99_ms"] > 0
    assert "slow many" in done.stdout and "big fan-out" in done.stdout
    assert "many stored" in done.stdout and "fairness" in done.stdout
    assert report["latency"]["p99_ms"] > 0
    assert report["latency"]["broker_floor"]["p99_ms"] > 0
    assert report["latency_apache"]["p99_ms"] > 0
    assert "end to end sqlite on Apache Kafka" in done.stdout
    assert "every subscription templated" in done.stdout
    assert "every subscription filtered" in done.stdout
    assert "every subscription ordered" in done.stdout
    assert "two delivery workers" in done.stdout
    backlog = report["backlog"]
    assert backlog["deliveries_per_s"] > 0
    # Paired as the empty store's runs are: compared as ratios to their own references.
    assert len(backlog["ratios"]) == len(backlog["references"]) == 1
    assert backlog["ratio"] == backlog["deliveries_per_s"] / backlog["reference"]
    assert "the ratio is of ratios to (a)" in done.stdout
    assert all(report["grpc"]["service"][call] > 0 for call in ("create", "get", "list50"))
    assert "end to end sqlite" in done.stdout and "gRPC get" in done.stdout


@pytest.mark.parametrize(
    ("elapsed", "sqlite_run_s", "skip", "expected"),
    [
        (170.0, 28.0, [], 50_000),  # fits: 3 x 28 s x 2.5 = 210 s of 310 s left
        (300.0, 54.0, [], 22_000),  # 180 s left for 405 s planned: 0.44 of the events
        (300.0, 54.0, ["postgres", "backlog"], 50_000),  # nothing after SQLite
        (560.0, 54.0, [], 10_000),  # past the budget already: the floor
    ],
)
def test_later_runs_shrink_only_to_fit_the_budget(
    elapsed: float, sqlite_run_s: float, skip: list[str], expected: int
) -> None:
    args = argparse.Namespace(events=50_000, runs=3, budget_seconds=570.0, skip=skip)
    assert later_events(args, elapsed, sqlite_run_s) == expected
    args.budget_seconds = 0.0  # no budget: every run gets them all
    assert later_events(args, elapsed, sqlite_run_s) == 50_000
