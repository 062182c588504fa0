"""webhookctl against a real server: every command, tables and --json, one-line errors."""

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from service.ctl.main import main
from service.domain import signing
from tests.pipeline_support import Pipeline, Receiver, Reply
from tests.support import KEYS, Api


class Ctl:
    """Runs webhookctl in this process with the server's address and a key."""

    def __init__(self, api: Api, capsys: pytest.CaptureFixture[str], key: str) -> None:
        self._base = ["--address", api.address, "--api-key", key]
        self._capsys = capsys

    def __call__(self, *args: str, code: int = 0) -> str:
        self._capsys.readouterr()
        exit_code = main([*self._base, *args])
        out, err = self._capsys.readouterr()
        assert exit_code == code, f"exit {exit_code}: {out}{err}"
        return out if code == 0 else err

    def json(self, *args: str) -> Any:
        return json.loads(self("--json", *args))


@pytest.fixture
def ctl(api: Api, capsys: pytest.CaptureFixture[str]) -> Ctl:
    return Ctl(api, capsys, KEYS["alice"])


def test_subscription_lifecycle_in_tables_and_json(ctl: Ctl) -> None:
    out = ctl(
        "subscriptions",
        "create",
        "--name",
        "crm",
        "--url",
        "https://hooks.example.com/crm",
        "--event-type",
        "lead.*",
        "--header",
        "x-team=sales",
        "--header",
        "x-token=t0ps3cret",
        "--visible-header",
        "x-team",
        "--rate-limit",
        "7",
    )
    assert "secret" in out and "whsec_" in out and "lead.*" in out
    created = ctl.json("subscriptions", "get", _id_from(out))["subscription"]
    assert created["name"] == "crm" and created["rate_limit_per_second"] == 7
    assert created["headers"] == {"x-team": "sales", "x-token": "<redacted>"}
    assert "secret" not in created and "t0ps3cret" not in out

    table = ctl("subscriptions", "list")
    header, row = table.splitlines()[:2]
    assert header.split()[:3] == ["ID", "NAME", "URL"]
    assert row.split()[:3] == [created["id"], "crm", "https://hooks.example.com/crm"]

    updated = ctl.json(
        "subscriptions", "update", created["id"], "--disable", "--description", "paused"
    )["subscription"]
    assert updated["enabled"] is False and updated["description"] == "paused"
    assert updated["url"] == created["url"]  # only the flags given change

    rotated = ctl.json("subscriptions", "rotate-secret", created["id"], "--overlap", "0")
    assert rotated["secret"].startswith("whsec_")
    assert rotated["subscription"]["secret_prefix"] == rotated["secret"][:12]

    assert ctl("subscriptions", "delete", created["id"]).strip() == f"deleted {created['id']}"
    err = ctl("subscriptions", "get", created["id"], code=1)
    assert err.startswith("webhookctl: NOT_FOUND: ") and len(err.strip().splitlines()) == 1


def test_payload_formats_proofs_skip_and_verification(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = '{"type": "{{type}}", "body": "{{data}}", "sent_at": "{{sent_at}}"}'
    made = ctl.json(
        "subscriptions",
        "create",
        "--name",
        "seed-003",
        "--url",
        "https://hooks.example.com/a",
        "--payload-format",
        "template",
        "--payload-template",
        template,
    )
    sub_id, secret = made["subscription"]["id"], made["secret"]
    shown = ctl("subscriptions", "get", sub_id)
    [payload] = [line for line in shown.splitlines() if line.startswith("payload ")]
    assert payload.split()[1] == "template" and '"sent_at": "{{sent_at}}"' in payload
    ctl("subscriptions", "create", "--name", "b", "--url", "https://hooks.example.com/b")
    listed = ctl.json("subscriptions", "list", "--page-size", "1", "--skip", "1")
    assert [s["name"] for s in listed["subscriptions"]] == ["b"]
    # A wrong proof is refused in one line; the right one, from the environment, works.
    err = ctl(
        "subscriptions",
        "update",
        sub_id,
        "--description",
        "x",
        "--secret-proof",
        "whsec_wrong",
        code=1,
    )
    assert err.startswith("webhookctl: INVALID_ARGUMENT") and "whsec_wrong" not in err
    monkeypatch.setenv("WEBHOOKCTL_SECRET_PROOF", secret)
    assert (
        ctl.json("subscriptions", "update", sub_id, "--payload-format", "data")["subscription"][
            "payload_format"
        ]
        == "PAYLOAD_FORMAT_DATA"
    )
    err = ctl("subscriptions", "update", sub_id, "--filter", "data.n >", code=1)
    assert err.startswith("webhookctl: INVALID_ARGUMENT") and "1:9: Syntax error" in err
    assert len(err.strip().splitlines()) == 1
    ctl("subscriptions", "update", sub_id, "--filter", "data.n > 1")
    [shown_filter] = [
        line for line in ctl("subscriptions", "get", sub_id).splitlines() if "filter" in line
    ]
    assert shown_filter.split()[-3:] == ["data.n", ">", "1"]
    assert ctl("subscriptions", "delete", sub_id).strip() == f"deleted {sub_id}"
    # --verify pings first: nothing listens on port 1.
    err = ctl(
        "subscriptions",
        "create",
        "--name",
        "c",
        "--url",
        "https://127.0.0.1:1/x",
        "--verify",
        code=1,
    )
    assert err.startswith("webhookctl: FAILED_PRECONDITION") and "verification failed" in err


def test_event_types_list_shows_the_catalog(ctl: Ctl) -> None:
    names = [
        t["name"] for t in ctl.json("event-types", "list", "--page-size", "100")["event_types"]
    ]
    assert {"lead.created", "person.created", "invoice.paid"} <= set(names)
    table = ctl("event-types", "list", "--subscribable-only")
    assert "lead.created" in table and "meeting.booked" not in table  # alice lacks that scope


def test_bad_input_is_one_line_with_code_and_fields(ctl: Ctl) -> None:
    err = ctl("subscriptions", "create", "--name", "", "--url", "ftp://x", code=1)
    assert err.startswith("webhookctl: INVALID_ARGUMENT: ")
    assert "subscription.name" in err and "subscription.url" in err
    assert len(err.strip().splitlines()) == 1


def test_wrong_key_and_unreachable_server_fail_clearly(api: Api, capsys: Any) -> None:
    assert main(["--address", api.address, "--api-key", "nope", "subscriptions", "list"]) == 1
    assert capsys.readouterr().err.startswith("webhookctl: UNAUTHENTICATED: ")
    assert main(["--address", "127.0.0.1:1", "--api-key", "k", "subscriptions", "list"]) == 1
    assert capsys.readouterr().err.startswith("webhookctl: UNAVAILABLE: ")
    assert main(["--address", api.address, "--api-key", "k", "deliveries", "list", "--since", "x"])
    assert "--since 'x' is not an ISO 8601 time" in capsys.readouterr().err


def test_publish_list_get_retry_and_test_event(
    make_pipeline: Any, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline: Pipeline = make_pipeline()
    ctl = Ctl(pipeline.api, capsys, KEYS["alice"])
    url = receiver.url("/cli")
    created = ctl.json(
        "subscriptions", "create", "--name", "cli", "--url", url, "--event-type", "invoice.paid"
    )
    out = ctl("events", "publish", "--type", "invoice.paid", "--data", '{"invoice": 7}')
    assert out.startswith("published ") and pipeline.topic in out

    [request] = receiver.wait_for("/cli", 1)
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert signing.verify(
        [created["secret"]],
        headers["webhook-id"],
        headers["webhook-timestamp"],
        headers["webhook-signature"],
        request.body,
        now=int(headers["webhook-timestamp"]),
    )
    assert request.json["data"] == {"invoice": 7}

    listed = _eventually(lambda: ctl.json("deliveries", "list", "--status", "succeeded"))
    [delivery] = listed["deliveries"]
    assert delivery["id"] == headers["webhook-id"]
    table = ctl("deliveries", "list", "--subscription", created["subscription"]["id"])
    assert delivery["id"] in table and "succeeded" in table

    shown = ctl("deliveries", "get", delivery["id"])
    assert "succeeded" in shown and "scheduled" in shown and "200" in shown

    retried = ctl.json("deliveries", "retry", delivery["id"])["delivery"]
    assert retried["id"] == delivery["id"]
    receiver.wait_for("/cli", 2)

    sent = ctl.json("test-event", "send", created["subscription"]["id"])["delivery"]
    assert sent["test"] is True and sent["status"] == "DELIVERY_STATUS_SUCCEEDED"
    assert receiver.wait_for("/cli", 3)[-1].json["test"] is True

    # Recover by status, and a backfill to a subscription made after the event.
    subscription = created["subscription"]["id"]
    out = ctl("deliveries", "recover", "--subscription", subscription, "--since", "2026-01-01")
    assert out.strip() == "queued 0 failed deliveries again"
    recovered = ctl.json(
        "deliveries",
        "recover",
        "--subscription",
        subscription,
        "--since",
        "2026-01-01",
        "--status",
        "succeeded",
    )
    assert recovered["queued_count"] == 2  # the event's delivery and the test delivery
    later = ctl.json("subscriptions", "create", "--name", "later", "--url", receiver.url("/late"))
    args = ["--subscription", later["subscription"]["id"], "--since", "2026-01-01"]
    out = ctl("events", "replay", *args, "--event-type", "invoice.*", "--request-id", "r-1")
    assert out.strip() == "queued 1 events as new deliveries (trigger REPLAY)"  # not the test one
    assert receiver.wait_for("/late", 1)[0].json["data"] == {"invoice": 7}
    assert (
        ctl.json("events", "replay", *args, "--request-id", "r-1", "--event-type", "invoice.*")[
            "queued_count"
        ]
        == 1
    )

    # An ordered subscription holding its key after a failure, released from the CLI.
    failing = receiver.reply("/down", Reply(500))
    ordered = ctl.json(
        "subscriptions",
        "create",
        *("--name", "ordered", "--url", failing, "--event-type", "person.created"),
        *("--ordering", "per-key-hold"),
    )["subscription"]
    assert ordered["ordering"] == "ORDERING_PER_KEY_HOLD"
    assert "per_key_hold" in ctl("subscriptions", "get", ordered["id"])
    ctl("events", "publish", "--type", "person.created", "--ordering-key", "lead-42")
    held = _eventually(
        lambda: ctl.json(
            "deliveries", "list", "--subscription", ordered["id"], "--status", "failed"
        )
    )["deliveries"]
    assert held[0]["ordering_key"] == "lead-42" and held[0]["holds_key"] is True
    assert "lead-42 (held)" in ctl("deliveries", "get", held[0]["id"])
    released = ctl("deliveries", "release", held[0]["id"])
    assert "lead-42" in released and "(held)" not in released
    err = ctl("deliveries", "release", held[0]["id"], code=1)
    assert err.startswith("webhookctl: FAILED_PRECONDITION") and "holds no ordering key" in err


def test_console_script_reads_address_and_key_from_environment(api: Api) -> None:
    env = dict(os.environ, WEBHOOKCTL_ADDRESS=api.address, WEBHOOKCTL_API_KEY=KEYS["reader"])
    script = os.path.join(os.path.dirname(sys.executable), "webhookctl")
    done = subprocess.run(
        [script, "subscriptions", "list"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.strip() == "(none)", done.stderr
    denied = subprocess.run(
        [script, "subscriptions", "create", "--name", "n", "--url", "https://e.com/"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert denied.returncode == 1
    assert denied.stderr.startswith("webhookctl: PERMISSION_DENIED: ")
    assert KEYS["reader"] not in denied.stderr


def _id_from(text: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith("id "))


def _eventually(fn: Any, timeout: float = 10.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result.get("deliveries") or time.monotonic() > deadline:
            return result
        time.sleep(0.1)
