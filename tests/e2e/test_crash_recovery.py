"""The service process killed (SIGKILL) or stopped (SIGTERM) in the middle of a stream of
events: every event is delivered at least once, duplicates carry the same webhook-id, and a
clean stop sends nothing twice."""

import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.pipeline_support import (
    Broker,
    Receiver,
    Reply,
    new_topic,
    pipeline_env,
    stream_events,
    wait_all_delivered,
)
from tests.support import ServiceProcess, process_env

EVENTS = 300


@pytest.mark.slow
def test_sigkill_mid_stream_loses_nothing(
    database_url: str,
    tmp_path: Path,
    broker: Broker,
    receiver: Receiver,
) -> None:
    topic = new_topic(broker.bootstrap)
    env = process_env(tmp_path, database_url, **pipeline_env(broker, topic))
    first = ServiceProcess(env, tmp_path / "first.log").start()
    second = ServiceProcess(env, tmp_path / "second.log")
    try:
        first.subscribe(receiver.url("/crash"))
        ids = [f"evt-{n:04d}" for n in range(EVENTS)]
        producer = stream_events(broker.bootstrap, topic, ids, pause=0.02)
        receiver.wait_for("/crash", 40)  # well into the stream
        first.kill()
        killed_after = len(receiver.at("/crash"))
        assert killed_after < EVENTS, "the stream ended before the kill; nothing was tested"
        second.start()
        producer.join(30)
        seen = wait_all_delivered(receiver, "/crash", ids, timeout=60)
    finally:
        first.stop()
        second.stop()
    # At least once; a redelivered event keeps its webhook-id, so receivers can deduplicate.
    assert all(len(webhook_ids) == 1 for webhook_ids in seen.values())


@pytest.mark.slow
def test_sigterm_drains_and_commits_so_a_restart_resends_nothing(
    tmp_path: Path, broker: Broker, receiver: Receiver
) -> None:
    topic = new_topic(broker.bootstrap)
    env = process_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'drain.db'}",
        **pipeline_env(broker, topic),
        WEBHOOKS_SHUTDOWN_GRACE_SECONDS="10",
    )
    first = ServiceProcess(env, tmp_path / "first.log").start()
    second = ServiceProcess(env, tmp_path / "second.log")
    try:
        # Slow answers: attempts are in flight when SIGTERM arrives, and must finish.
        first.subscribe(receiver.reply("/drain", Reply(delay=0.1)))
        ids = [f"evt-{n:04d}" for n in range(100)]
        producer = stream_events(broker.bootstrap, topic, ids, pause=0.02)
        receiver.wait_for("/drain", 20)
        assert first.terminate() == 0
        stopped_at = len(receiver.at("/drain"))
        producer.join(30)
        second.start()
        wait_all_delivered(receiver, "/drain", ids, timeout=60)
        time.sleep(1.0)
    finally:
        first.stop()
        second.stop()
    counts: dict[str, int] = defaultdict(int)
    for req in receiver.at("/drain"):
        counts[req.json["id"]] += 1
    duplicates = {event_id: n for event_id, n in counts.items() if n > 1}
    assert duplicates == {}, f"resent after a clean stop (stopped at {stopped_at}): {duplicates}"
    log = (tmp_path / "first.log").read_text()
    assert '"message": "stopped"' in log
