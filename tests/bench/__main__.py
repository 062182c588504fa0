"""make bench: ceilings, end to end on SQLite and PostgreSQL, latency, backlog, gRPC, RSS.
Prints one table and writes bench-results.json. `--smoke` is the few-hundred-event version
the test suite runs so the benchmark never rots."""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka.embedded import free_port
from tests import postgres_server
from tests.bench import backlog, ceilings, e2e, grpc_calls, scale
from tests.support import postgres_schema

CONCURRENCY = 64


def paired_runs(
    runs: int,
    measure: Callable[[], dict[str, float]],
    reference: Callable[[], float],
    stack: e2e.Stack,
) -> dict[str, Any]:
    """Each run right after its own reference (a), so that its ratio compares two rates
    measured within seconds of each other: this machine's speed drifts by a third over the
    minutes a full run takes. The stack is paused meanwhile. The run with the median ratio
    is reported."""
    results = []
    for _ in range(runs):
        with stack.paused():
            baseline = reference()
        result: dict[str, Any] = dict(measure())
        result["reference"] = baseline
        result["ratio"] = result["deliveries_per_s"] / baseline
        results.append(result)
    results.sort(key=lambda r: r["ratio"])
    middle = dict(results[len(results) // 2])
    middle["runs"] = [round(r["deliveries_per_s"], 1) for r in results]
    middle["ratios"] = [round(r["ratio"], 3) for r in results]
    middle["references"] = [round(r["reference"], 1) for r in results]
    return middle


def pipeline_runs(
    name: str,
    database_url: str,
    args: argparse.Namespace,
    receiver: e2e.Receiver,
    work: Path,
    reference: Callable[[], float],
    broker_kind: str = "tansu",
    template: str = "",
    filtered: bool = False,
    keys: int = 0,
    settings: dict[str, str] | None = None,
    shape: str = "",
) -> dict[str, Any]:
    """`keys`: every subscription orders per key, and the events carry that many keys;
    `settings`: the service's, beside the defaults; `shape`: one of scale.SHAPES, with
    about as many deliveries as the default shape's events make (`longer` times as many)."""
    out: dict[str, Any] = {}
    if shape:
        form = scale.SHAPES[shape]
        stack = e2e.Stack.start(
            work / name,
            database_url,
            broker_kind,
            tenants=form.tenants,
            WEBHOOKS_SUBSCRIPTION_QUOTA="0",
            **form.settings,
        )
        deliveries = int(args.events * e2e.MEAN_FAN_OUT) * form.longer

        def run(size: int) -> dict[str, float]:
            records, expected = form.events(size)
            return e2e.deliver(stack, receiver, records, expected, args.timeout)

        def subscribe() -> None:
            form.subscribe(stack, receiver)
    else:
        stack = e2e.Stack.start(work / name, database_url, broker_kind, **(settings or {}))
        deliveries = args.events

        def run(size: int) -> dict[str, float]:
            return e2e.throughput(stack, receiver, size, args.timeout, keys)

        def subscribe() -> None:
            stack.subscribe(receiver.url, template, filtered, ordered=bool(keys))

    try:
        subscribe()
        run(min(deliveries, 1000))  # warm up
        out["throughput"] = paired_runs(args.runs, lambda: run(deliveries), reference, stack)
        out["rss_mb"] = e2e.rss_peak_mb(stack.service.process.pid)  # type: ignore[union-attr]
    finally:
        stack.stop()
    return out


# A vendor envelope (seed 003's plus the event's id and tenant): the fields a template
# fills in at fan-out and the send time it fills in at each attempt.
TEMPLATE = (
    '{"type": "{{type}}", "id": "{{id}}", "tenant": "{{tenant}}", "body": "{{data}}",'
    ' "sent_at": "{{sent_at}}"}'
)

# The ordered row's events carry this many keys: one delivery per key and subscription at
# a time, so fewer keys would measure the endpoint's round trip rather than the service.
ORDERING_KEYS = 1000


@dataclass(frozen=True)
class Variant:
    """A run like the SQLite one with one thing changed, reported as a ratio to it."""

    skip: str  # its --skip name
    key: str  # its report key
    label: str
    target: str
    options: dict[str, Any]


VARIANTS = (
    Variant(
        "template",
        "sqlite_template",
        "every subscription templated",
        ">= 0.95 x default format",
        {"template": TEMPLATE},
    ),
    Variant(
        "filter",
        "sqlite_filtered",
        "every subscription filtered",
        ">= 0.9 x no filters",
        {"filtered": True},
    ),
    Variant(
        "ordered",
        "sqlite_ordered",
        f"every subscription ordered, {ORDERING_KEYS} keys",
        "x unordered (measured)",
        {"keys": ORDERING_KEYS},
    ),
    Variant(
        "workers",
        "sqlite_two_workers",
        "two delivery workers",
        ">= 0.95 x one worker",
        {"settings": {"WEBHOOKS_DELIVERY_WORKERS": "2"}},
    ),
    Variant(
        "slow",
        "slow_many",
        f"slow many: {len(scale.SLOW_TENANTS) * scale.SLOW_PER_TENANT} endpoints on 20 hosts,"
        " 100 tenants, lognormal 100 ms",
        ">= 0.8 x default",
        {"shape": "slow_many"},
    ),
    Variant(
        "fanout",
        "fan_out",
        f"big fan-out: {scale.FAN_OUT} subscriptions take each event",
        ">= 0.9 x default",
        {"shape": "fan_out"},
    ),
    Variant(
        "stored",
        "many_stored",
        f"many stored: {scale.STORED:,} more subscriptions of other tenants",
        ">= 0.95 x default",
        {"shape": "many_stored"},
    ),
)

# PostgreSQL runs take ~1.5x as long as SQLite's; the backlog's seeding, gRPC and the
# stacks' starts take about this many seconds.
_POSTGRES_SLOWER = 1.5
_FIXED_S = 90.0


def later_events(args: argparse.Namespace, elapsed: float, sqlite_run_s: float) -> int:
    """Events per run for the PostgreSQL and backlog runs: all of them (args.events) unless
    that would take the bench past its budget on a slow machine, then fewer (at least
    10,000), estimated from the SQLite run. The table names the count of each."""
    share = (0.0 if "postgres" in args.skip else _POSTGRES_SLOWER) + (
        0.0 if "backlog" in args.skip else 1.0
    )
    planned = args.runs * sqlite_run_s * share
    left = args.budget_seconds - elapsed - _FIXED_S
    if not args.budget_seconds or planned <= left:
        return int(args.events)
    fewer = int(args.events * max(left, 0.0) / planned) // 1000 * 1000
    return max(min(int(args.events), 10_000), fewer)


def latency_run(
    args: argparse.Namespace, receiver: e2e.Receiver, work: Path, broker_kind: str = "tansu"
) -> dict[str, Any]:
    """`runs` runs, each on a fresh broker and store (in tansu's memory storage every batch
    left by an earlier run would slow each fetch) and followed by the broker alone, measured
    the same way. The run with the median p99 is reported: the same code gave a p99 of 44
    and of 144 ms in two runs a minute apart here, so one run says little."""
    results = []
    for n in range(args.runs):
        name = f"latency-{broker_kind}-{n}"
        stack = e2e.Stack.start(work / name, f"sqlite:///{work / f'{name}.db'}", broker_kind)
        try:
            stack.subscribe(receiver.url)
            e2e.throughput(stack, receiver, min(args.events, 500), args.timeout)  # warm up
            result: dict[str, Any] = e2e.latency(stack, receiver, args.rate, args.latency_seconds)
            result["rss_mb"] = e2e.rss_peak_mb(stack.service.process.pid)  # type: ignore[union-attr]
        finally:
            stack.stop()
        result["broker_floor"] = e2e.broker_floor(
            args.rate, args.latency_seconds, work / f"{name}-floor", broker_kind
        )
        results.append(result)
    results.sort(key=lambda r: r["p99_ms"])
    middle = dict(results[len(results) // 2])
    middle["runs_p99_ms"] = [round(r["p99_ms"], 1) for r in results]
    middle["runs_p50_ms"] = [round(r["p50_ms"], 1) for r in results]
    middle["floor_p99_ms"] = [round(r["broker_floor"]["p99_ms"], 1) for r in results]
    middle["rss_mb"] = max(r["rss_mb"] for r in results)
    return middle


def backlog_run(
    database_url: str,
    args: argparse.Namespace,
    receiver: e2e.Receiver,
    work: Path,
    reference: Callable[[], float],
) -> dict[str, Any]:
    """Paired like the empty-store runs, so the two compare as ratios to references measured
    just before each: minutes apart, as rates, they would compare this machine's speed then
    (in one bench the references went from 16,645 to 13,075 POST/s before the backlog runs)."""
    stack = e2e.Stack.start(work / "backlog", database_url)
    try:
        stack.subscribe(receiver.url)
        stack.service.terminate()
        started = time.monotonic()
        backlog.seed(database_url, args.backlog_old, args.backlog_pending)
        seeded = time.monotonic() - started
        stack.service.start(timeout=120)
        e2e.throughput(stack, receiver, min(args.events, 500), args.timeout)
        result = paired_runs(
            args.runs,
            lambda: e2e.throughput(stack, receiver, args.events, args.timeout),
            reference,
            stack,
        )
        result["seed_s"] = seeded
        result["rss_mb"] = e2e.rss_peak_mb(stack.service.process.pid)  # type: ignore[union-attr]
        return result
    finally:
        stack.stop()


def fairness_run(
    args: argparse.Namespace, receiver: e2e.Receiver, work: Path, stored_first: bool
) -> dict[str, Any]:
    name = f"fairness-{'stored' if stored_first else 'kafka'}"
    stack = e2e.Stack.start(
        work / name,
        f"sqlite:///{work / f'{name}.db'}",
        tenants=(scale.NOISY, scale.QUIET),
        WEBHOOKS_SUBSCRIPTION_QUOTA="0",
    )
    try:
        scale.subscribe_fairness(stack, receiver)
        result = scale.fairness(stack, receiver, args.fair_rate, args.fair_seconds, stored_first)
        result["rss_mb"] = e2e.rss_peak_mb(stack.service.process.pid)  # type: ignore[union-attr]
        return result
    finally:
        stack.stop()


def grpc_run(database_url: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bare_grpc", "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert bare.stdout is not None and bare.stdout.readline().strip() == b"ready"
        baseline = grpc_calls.measure(f"127.0.0.1:{port}", "unused", args.grpc_seconds)
    finally:
        bare.kill()
        bare.wait()
    stack = e2e.Stack.start(
        work / "grpc", database_url, WEBHOOKS_KAFKA_ENABLED="false", WEBHOOKS_SUBSCRIPTION_QUOTA="0"
    )
    try:
        key = stack.keys["acme"]
        service = grpc_calls.measure(f"127.0.0.1:{stack.service.port}", key, args.grpc_seconds)
        rss = e2e.rss_peak_mb(stack.service.process.pid)  # type: ignore[union-attr]
    finally:
        stack.stop()
    return {"bare": baseline, "service": service, "rss_mb": rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="latency run, events/s")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--backlog-old", type=int, default=500_000)
    parser.add_argument("--backlog-pending", type=int, default=100_000)
    parser.add_argument("--grpc-seconds", type=float, default=5.0)
    parser.add_argument("--fair-rate", type=float, default=20.0, help="quiet tenant, events/s")
    parser.add_argument("--fair-seconds", type=float, default=10.0)
    parser.add_argument("--ceiling-requests", type=int, default=50_000)
    parser.add_argument(
        "--paired-requests", type=int, default=15_000, help="the reference before each run"
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=720.0,
        help="fewer events in the PostgreSQL and backlog runs when the whole would take longer"
        " (0: no budget)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="template, filter, ordered, workers, slow, fanout, stored, fairness, apache (its"
        " rows), latency, postgres, backlog, grpc",
    )
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--smoke", action="store_true", help="a few hundred events, one run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events, args.runs, args.rate, args.latency_seconds = 300, 1, 100.0, 2.0
        args.backlog_old, args.backlog_pending, args.grpc_seconds = 2000, 200, 0.5
        args.fair_seconds = 2.0
        args.ceiling_requests = args.paired_requests = 500
        e2e.APACHE_QUICK_JIT = True
        scale.STORED, scale.NOISY_DELIVERIES, scale.FAN_OUT = 1000, 2000, 50
        scale.SLOW_TENANTS = scale.SLOW_TENANTS[:5]

    started = time.monotonic()
    report: dict[str, Any] = {
        "machine": {
            "cpus": _cpus(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    receiver = e2e.Receiver()
    try:
        url = f"{receiver.url}/ceiling"

        report["ceiling_reference"] = ceilings.reference(url, args.ceiling_requests, CONCURRENCY)

        def reference() -> float:
            # Beside a paused stack: ~3 s, well inside the consumer's 6 s session timeout.
            return ceilings.reference(url, args.paired_requests, CONCURRENCY)

        report["ceiling_own_client"] = ceilings.own_client(url, args.ceiling_requests, CONCURRENCY)
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            work = Path(tmp)
            sqlite_url = f"sqlite:///{work / 'bench.db'}"
            report["sqlite"] = pipeline_runs("sqlite", sqlite_url, args, receiver, work, reference)
            for variant in VARIANTS:
                if variant.skip not in args.skip:
                    report[variant.key] = pipeline_runs(
                        variant.key,
                        f"sqlite:///{work / f'{variant.key}.db'}",
                        args,
                        receiver,
                        work,
                        reference,
                        **variant.options,
                    )
            if "apache" not in args.skip:
                report["sqlite_apache"] = pipeline_runs(
                    "sqlite-apache",
                    f"sqlite:///{work / 'bench-apache.db'}",
                    args,
                    receiver,
                    work,
                    reference,
                    "apache",
                )
            if "fairness" not in args.skip:
                report["fairness"] = fairness_run(args, receiver, work, stored_first=True)
                report["fairness_kafka"] = fairness_run(args, receiver, work, stored_first=False)
            if "latency" not in args.skip:
                report["latency"] = latency_run(args, receiver, work)
                if "apache" not in args.skip:
                    report["latency_apache"] = latency_run(args, receiver, work, "apache")
            events = later_events(
                args, time.monotonic() - started, report["sqlite"]["throughput"]["total_s"]
            )
            report["later_events"] = events
            args = argparse.Namespace(**{**vars(args), "events": events})
            if "postgres" not in args.skip:
                with (
                    postgres_server.database_url() as database,
                    postgres_schema(database.url, "bench") as url_pg,
                ):
                    report["postgres"] = pipeline_runs(
                        "postgres", url_pg, args, receiver, work, reference
                    )
            if "backlog" not in args.skip:
                report["backlog"] = backlog_run(
                    f"sqlite:///{work / 'backlog.db'}", args, receiver, work, reference
                )
            if "grpc" not in args.skip:
                report["grpc"] = grpc_run(f"sqlite:///{work / 'grpc.db'}", args, work)
    finally:
        receiver.stop()
    report["elapsed_s"] = time.monotonic() - started
    rows = table(report)
    print(rows)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.output} in {report['elapsed_s']:.0f} s")
    return 0


def table(report: dict[str, Any]) -> str:
    ref, own = report["ceiling_reference"], report["ceiling_own_client"]
    lines: list[tuple[str, str, str, str]] = [("measure", "value", "ratio", "target")]

    def add(name: str, value: str, ratio: float | None = None, target: str = "") -> None:
        lines.append((name, value, "" if ratio is None else f"{ratio:.2f}", target))

    add("(a) aiohttp on uvloop, bare POST/s", f"{ref:,.0f}")
    add("(b) service HTTP client, bare POST/s", f"{own:,.0f}", own / ref)
    for db, target in (("sqlite", 0.5), ("postgres", 0.35)):
        if db not in report:
            continue
        t = report[db]["throughput"]
        add(
            f"end to end {db}, deliveries/s ({t['events']:,} events; runs {t['runs']})",
            f"{t['deliveries_per_s']:,.0f}",
            t["ratio"],
            f">= {target} x (a)",
        )
        add(f"  its (a) just before; ratio of each run {t['ratios']}", f"{t['reference']:,.0f}")
        add(f"  ratio to (b), {db}", "", t["deliveries_per_s"] / own)
        add(f"  service + workers CPU per delivery, {db}", f"{t['cpu_us_per_delivery']:.0f} us")
        add(f"  service peak RSS, {db}", f"{report[db]['rss_mb']:.0f} MB", None, "< 300 MB")
    for variant in VARIANTS:
        if variant.key not in report:
            continue
        t, default = report[variant.key]["throughput"], report["sqlite"]["throughput"]
        add(
            f"end to end sqlite, {variant.label} ({t['events']:,} events; runs {t['runs']})",
            f"{t['deliveries_per_s']:,.0f}",
            t["ratio"] / default["ratio"],
            variant.target,
        )
        add(
            f"  its (a) just before; the ratio is of ratios to (a), {t['ratio']:.3f} /"
            f" {default['ratio']:.3f}",
            f"{t['reference']:,.0f}",
        )
        add(
            "  service + workers CPU per delivery, x default's",
            f"{t['cpu_us_per_delivery']:.0f} us",
            t["cpu_us_per_delivery"] / default["cpu_us_per_delivery"],
            "<= 1.2 x" if variant.key == "slow_many" else "",
        )
        rss = report[variant.key]["rss_mb"]
        add("  service peak RSS", f"{rss:.0f} MB", None, "< 300 MB")
    fair, kafka = report.get("fairness"), report.get("fairness_kafka")
    if fair and kafka:
        add(
            f"fairness: quiet tenant's events p50 / p99 / max ms ({fair['quiet_events']} events)"
            f" while {scale.NOISY_DELIVERIES:,} noisy deliveries are pending",
            f"{fair['p50_ms']:.0f} / {fair['p99_ms']:.0f} / {fair['max_ms']:.0f}",
            None,
            "p99 <= 1000 ms",
        )
        add(
            "  the same while the noisy burst is still read from Kafka ahead of them",
            f"{kafka['p50_ms']:.0f} / {kafka['p99_ms']:.0f} / {kafka['max_ms']:.0f}",
        )
        rss = max(fair["rss_mb"], kafka["rss_mb"])
        add("  service peak RSS, fairness", f"{rss:.0f} MB", None, "< 300 MB")
    lat = report.get("latency")
    if lat:
        add(
            f"latency p50 / p99 / max ms ({lat['deliveries']} deliveries, sqlite;"
            f" median of p99s {lat['runs_p99_ms']})",
            f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} / {lat['max_ms']:.1f}",
            None,
            "p99 <= 25 ms",
        )
        floor = lat["broker_floor"]
        add(
            f"  the broker alone, produce to a bare consumer, same rate (p99s"
            f" {lat['floor_p99_ms']})",
            f"{floor['p50_ms']:.1f} / {floor['p99_ms']:.1f} / {floor['max_ms']:.1f}",
        )
        add("  service peak RSS, latency", f"{lat['rss_mb']:.0f} MB", None, "< 300 MB")
    if "sqlite_apache" in report:
        t, tansu = report["sqlite_apache"]["throughput"], report["sqlite"]["throughput"]
        add(
            f"end to end sqlite on Apache Kafka, deliveries/s ({t['events']:,} events; runs"
            f" {t['runs']})",
            f"{t['deliveries_per_s']:,.0f}",
            t["ratio"] / tansu["ratio"],
            ">= 0.9 x tansu",
        )
        add(
            f"  its (a) just before; the ratio is of ratios to (a), {t['ratio']:.3f} /"
            f" {tansu['ratio']:.3f}",
            f"{t['reference']:,.0f}",
        )
        rss = report["sqlite_apache"]["rss_mb"]
        add("  service peak RSS, Apache Kafka", f"{rss:.0f} MB", None, "< 300 MB")
    if "latency_apache" in report and lat:
        apache = report["latency_apache"]
        add(
            f"latency on Apache Kafka p50 / p99 / max ms ({apache['deliveries']} deliveries;"
            f" p99s {apache['runs_p99_ms']}), p99 / tansu's",
            f"{apache['p50_ms']:.1f} / {apache['p99_ms']:.1f} / {apache['max_ms']:.1f}",
            apache["p99_ms"] / lat["p99_ms"],
            "p99 <= 25 ms",
        )
        floor = apache["broker_floor"]
        add(
            f"  Apache Kafka alone, same rate (p99s {apache['floor_p99_ms']})",
            f"{floor['p50_ms']:.1f} / {floor['p99_ms']:.1f} / {floor['max_ms']:.1f}",
        )
    if "backlog" in report:
        b = report["backlog"]
        empty = report["sqlite"]["throughput"]
        add(
            f"backlog sqlite, deliveries/s ({b['events']:,} events; runs {b['runs']})",
            f"{b['deliveries_per_s']:,.0f}",
            b["ratio"] / empty["ratio"],
            ">= 0.8 x empty store",
        )
        add(
            f"  its (a) just before; the ratio is of ratios to (a), {b['ratio']:.3f} /"
            f" {empty['ratio']:.3f}",
            f"{b['reference']:,.0f}",
        )
        add(
            "  as rates, backlog / empty store",
            "",
            b["deliveries_per_s"] / empty["deliveries_per_s"],
        )
        add("  service peak RSS, backlog", f"{b['rss_mb']:.0f} MB", None, "< 300 MB")
    if "grpc" in report:
        g = report["grpc"]
        targets = {"create": "", "get": ">= 0.5 x bare", "list50": ">= 0.2 x bare"}
        for call, goal in targets.items():
            add(
                f"gRPC {call} calls/s (bare {g['bare'][call]:,.0f})",
                f"{g['service'][call]:,.0f}",
                g["service"][call] / g["bare"][call],
                goal,
            )
        add("  service peak RSS, gRPC", f"{g['rss_mb']:.0f} MB", None, "< 300 MB")
    widths = [max(len(row[i]) for row in lines) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
