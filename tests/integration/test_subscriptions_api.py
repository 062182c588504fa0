"""Subscription RPCs over a real port, on SQLite and on PostgreSQL."""

import base64
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from service.domain.signing_secrets import secret_prefix
from tests.support import KEYS, Api, api_store, expect_error
from webhooks.v1 import webhook_service_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_create_returns_secret_once_and_get_shows_only_prefix(api: Api) -> None:
    created = api.create(
        name="orders",
        url="https://hooks.example.com/orders",
        event_types=["lead.created", "person.*"],
        description="CRM sync",
        headers={"X-Team": "crm"},
        visible_headers=["X-Team"],
        rate_limit_per_second=25,
    )
    secret = created.secret
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    sub = created.subscription
    assert sub.id.startswith("sub_")
    assert sub.enabled and sub.disabled_reason == pb.DISABLED_REASON_UNSPECIFIED
    assert sub.secret_prefix == secret_prefix(secret) == secret[:12]
    assert sub.created_by == "alice"
    assert sub.create_time.seconds > 0 and sub.update_time == sub.create_time

    got = api.call(
        "GetSubscription", pb.GetSubscriptionRequest(id=sub.id), as_="reader"
    ).subscription
    assert got == sub
    assert secret not in str(got)
    assert list(got.event_types) == ["lead.created", "person.*"]
    assert dict(got.headers) == {"X-Team": "crm"}
    assert got.rate_limit_per_second == 25
    assert not got.HasField("last_delivery_time") and got.last_delivery_status == 0


def test_create_disabled_and_empty_event_types_means_all(api: Api) -> None:
    sub = api.create(enabled=False).subscription
    assert not sub.enabled
    assert sub.disabled_reason == pb.DISABLED_REASON_MANUAL
    assert list(sub.event_types) == []


@pytest.mark.parametrize(
    ("fields", "field", "text", "reason"),
    [
        ({"name": ""}, "subscription.name", "required", "FIELD_REQUIRED"),
        ({"name": "x" * 256}, "subscription.name", "at most 255", "FIELD_TOO_LONG"),
        ({"name": "a\x07b"}, "subscription.name", "control characters", "CONTROL_CHARACTERS"),
        (
            {"description": "d" * 1025},
            "subscription.description",
            "at most 1024",
            "FIELD_TOO_LONG",
        ),
        ({"url": ""}, "subscription.url", "required", "FIELD_REQUIRED"),
        ({"url": "http://hooks.example.com/x"}, "subscription.url", "https", "URL_NOT_HTTPS"),
        (
            {"url": "https://" + "a" * 2048 + ".com/"},
            "subscription.url",
            "at most 2048",
            "FIELD_TOO_LONG",
        ),
        (
            {"url": "https://user:pw@hooks.example.com/"},
            "subscription.url",
            "credentials",
            "URL_HAS_CREDENTIALS",
        ),
        ({"url": "https://h.example.com/#x"}, "subscription.url", "fragment", "URL_HAS_FRAGMENT"),
        ({"url": "https://h.example.com:99999/"}, "subscription.url", "valid URL", "URL_INVALID"),
        ({"url": "https://h.example.com:0/"}, "subscription.url", "port", "URL_BAD_PORT"),
        ({"url": "https://-bad-.example/"}, "subscription.url", "valid name", "URL_BAD_HOST"),
        (
            {"url": "https://10.0.0.5/hook"},
            "subscription.url",
            "non-public",
            "URL_HOST_NOT_PUBLIC",
        ),
        (
            {"event_types": ["no.such.type"]},
            "subscription.event_types",
            "unknown event types: no.such.type",
            "UNKNOWN_EVENT_TYPES",
        ),
        (
            {"event_types": ["lead.*", "bad type"]},
            "subscription.event_types",
            "malformed",
            "MALFORMED_EVENT_TYPES",
        ),
        (
            {"event_types": ["nothing.*"]},
            "subscription.event_types",
            "match no event type",
            "PATTERN_MATCHES_NOTHING",
        ),
        (
            {"event_types": ["lead.*", "lead.*"]},
            "subscription.event_types",
            "repeat",
            "DUPLICATE_EVENT_TYPES",
        ),
        (
            {"headers": {"webhook-signature": "x"}},
            "subscription.headers['webhook-signature']",
            "set by the service",
            "RESERVED_HEADER",
        ),
        (
            {"headers": {"Bad Name": "x"}},
            "subscription.headers['Bad Name']",
            "not a valid header name",
            "BAD_HEADER_NAME",
        ),
        (
            {"headers": {"X-Ok": "a\tb\x01"}},
            "subscription.headers['X-Ok']",
            "field-value",
            "BAD_HEADER_VALUE",
        ),
        (
            {"rate_limit_per_second": 100_001},
            "subscription.rate_limit_per_second",
            "between 0",
            "RATE_LIMIT_OUT_OF_RANGE",
        ),
        (
            {"payload_format": pb.PAYLOAD_FORMAT_TEMPLATE, "payload_template": '{"a": "{{b}}"}'},
            "subscription.payload_template",
            "unknown placeholder",
            "UNKNOWN_PLACEHOLDER",
        ),
    ],
)
def test_create_validation(
    api: Api, fields: dict[str, Any], field: str, text: str, reason: str
) -> None:
    details = expect_error(INVALID, api.create, **fields)
    assert field in details["violations"], details
    assert text in details["violations"][field]
    assert details["violation_reasons"][field] == reason
    assert details["reason"] == reason and details["domain"] == "webhooks.v1"


def test_create_reports_every_bad_field_at_once(api: Api) -> None:
    details = expect_error(
        INVALID, api.create, name="", url="ftp://x", event_types=["nope", "gone"]
    )
    assert set(details["violations"]) == {
        "subscription.name",
        "subscription.url",
        "subscription.event_types",
    }
    assert "nope, gone" in details["violations"]["subscription.event_types"]


def test_loopback_url_is_allowed_only_through_the_allow_list(make_server: Any) -> None:
    allowing = make_server()  # the tests allow-list 127.0.0.0/8
    assert allowing.create(url="https://127.0.0.1:8443/hook").subscription.id
    strict = make_server(WEBHOOKS_SSRF_ALLOW_CIDRS="")
    for url in (  # every spelling of an internal address
        "https://127.0.0.1:8443/hook",
        "https://2130706433/x",  # decimal
        "https://0177.0.0.1/x",  # octal
        "https://0x7f.1/x",  # hex, short form
        "https://127.1/x",
        "https://0/x",
        "https://localhost./x",
        "https://LocalHost/x",
        "https://api.localhost/x",
        "https://[::1]/x",
        "https://[::ffff:127.0.0.1]/x",  # IPv4-mapped
        "https://[::127.0.0.1]/x",  # IPv4-compatible
        "https://[64:ff9b::a9fe:a9fe]/x",  # NAT64 of the metadata address
        "https://169.254.169.254/latest/meta-data",
        "https://[fe80::1%25eth0]/x",
        "https://100.64.0.1/x",
    ):
        details = expect_error(INVALID, strict.create, url=url)
        assert "non-public" in details["violations"]["subscription.url"]


def test_http_is_accepted_only_in_development_mode(make_server: Any) -> None:
    dev = make_server(WEBHOOKS_ALLOW_HTTP="true")
    assert dev.create(url="http://127.0.0.1:9000/hook").subscription.url.startswith("http://")


def test_name_is_unique_per_tenant(api: Api) -> None:
    api.create(name="dup")
    details = expect_error(grpc.StatusCode.ALREADY_EXISTS, api.create, name="dup")
    assert details["reason"] == "NAME_TAKEN"
    # Another tenant may use the same name.
    assert api.create(as_="gina", name="dup").subscription.name == "dup"


def test_auth_failures(api: Api) -> None:
    request = pb.ListSubscriptionsRequest()
    missing = expect_error(
        grpc.StatusCode.UNAUTHENTICATED, api.call, "ListSubscriptions", request, as_=None
    )
    assert missing["reason"] == "MISSING_API_KEY"
    wrong = expect_error(
        grpc.StatusCode.UNAUTHENTICATED, api.call, "ListSubscriptions", request, key="whk_wrong"
    )
    assert wrong["reason"] == "INVALID_API_KEY"
    assert "whk_wrong" not in wrong["message"]
    revoked = expect_error(
        grpc.StatusCode.UNAUTHENTICATED, api.call, "ListSubscriptions", request, as_="revoked"
    )
    # Revoked looks exactly like unknown: nothing tells a caller the key was once valid.
    assert (revoked["reason"], revoked["message"]) == (wrong["reason"], wrong["message"])
    malformed = expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        api.stub.ListSubscriptions,
        request,
        metadata=[("authorization", f"Basic {KEYS['alice']}")],
    )
    assert malformed["reason"] == "MALFORMED_API_KEY"
    scope = expect_error(
        grpc.StatusCode.PERMISSION_DENIED, api.call, "ListSubscriptions", request, as_="nobody"
    )
    assert scope["reason"] == "MISSING_SCOPE" and scope["metadata"] == {"scope": "webhooks:read"}
    read_only = expect_error(grpc.StatusCode.PERMISSION_DENIED, api.create, as_="reader")
    assert read_only["metadata"] == {"scope": "webhooks:write"}


def test_subscribe_scopes_gate_exact_event_types(api: Api) -> None:
    details = expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        api.create,
        as_="bob",
        event_types=["lead.created", "meeting.booked"],
    )
    assert details["reason"] == "MISSING_SUBSCRIBE_SCOPE"
    assert details["metadata"]["scopes"] == "leads:subscribe,meetings:subscribe"
    # alice holds leads:subscribe; types without a scope need none; admins hold all.
    assert api.create(as_="alice", event_types=["lead.created", "person.created"]).subscription.id
    assert api.create(as_="bob", event_types=["person.created", "lead.*"]).subscription.id
    assert api.create(as_="admin", event_types=["meeting.booked"]).subscription.id


def test_tenant_isolation(api: Api) -> None:
    sub = api.create(as_="alice").subscription
    not_found = grpc.StatusCode.NOT_FOUND
    for method, request in [
        ("GetSubscription", pb.GetSubscriptionRequest(id=sub.id)),
        ("DeleteSubscription", pb.DeleteSubscriptionRequest(id=sub.id)),
        ("RotateSubscriptionSecret", pb.RotateSubscriptionSecretRequest(id=sub.id)),
        (
            "UpdateSubscription",
            pb.UpdateSubscriptionRequest(subscription=pb.Subscription(id=sub.id, name="stolen")),
        ),
    ]:
        details = expect_error(not_found, api.call, method, request, as_="gina")
        assert details["reason"] == "SUBSCRIPTION_NOT_FOUND"
    assert api.call("ListSubscriptions", pb.ListSubscriptionsRequest(), as_="gina").total_size == 0
    # Untouched for its owner.
    assert (
        api.call("GetSubscription", pb.GetSubscriptionRequest(id=sub.id)).subscription.name
        == sub.name
    )


def test_get_unknown_and_missing_id(api: Api) -> None:
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        api.call,
        "GetSubscription",
        pb.GetSubscriptionRequest(id="sub_nope"),
    )
    details = expect_error(INVALID, api.call, "GetSubscription", pb.GetSubscriptionRequest())
    assert details["violations"] == {"id": "is required"}


def test_quota_per_tenant(api: Api) -> None:
    # globex's quota is 2 (WEBHOOKS_TENANT_QUOTAS); acme has the default of 10.
    api.create(as_="gina")
    api.create(as_="gina")
    details = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, api.create, as_="gina")
    assert details["reason"] == "QUOTA_EXCEEDED" and details["quota"]
    assert details["metadata"] == {"quota": "2"}
    # Deleting one frees a place.
    first = api.call("ListSubscriptions", pb.ListSubscriptionsRequest(), as_="gina").subscriptions[
        0
    ]
    api.call("DeleteSubscription", pb.DeleteSubscriptionRequest(id=first.id), as_="gina")

    def total() -> int:
        page = api.call("ListSubscriptions", pb.ListSubscriptionsRequest(), as_="gina")
        return int(page.total_size)

    assert total() == 1  # the count kept on the tenant row: the refused create left no trace
    assert api.create(as_="gina").subscription.id
    assert total() == 2
    expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, api.create, as_="gina")


def test_pagination_across_pages(api: Api) -> None:
    ids = [api.create(as_="alice").subscription.id for _ in range(7)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = api.call(
            "ListSubscriptions", pb.ListSubscriptionsRequest(page_size=3, page_token=token)
        )
        assert page.total_size == 7
        assert len(page.subscriptions) <= 3
        seen += [s.id for s in page.subscriptions]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == ids  # oldest first, nothing repeated or skipped
    default = api.call("ListSubscriptions", pb.ListSubscriptionsRequest())
    assert len(default.subscriptions) == 7 and default.next_page_token == ""
    # Page N in one call (AIP-158 skip), as a page-numbered API asks; skip also counts
    # from a token's position.
    third = api.call("ListSubscriptions", pb.ListSubscriptionsRequest(page_size=3, skip=6))
    assert [s.id for s in third.subscriptions] == ids[6:] and third.next_page_token == ""
    assert third.total_size == 7
    second = api.call("ListSubscriptions", pb.ListSubscriptionsRequest(page_size=3, skip=3))
    assert [s.id for s in second.subscriptions] == ids[3:6] and second.next_page_token
    after = api.call(
        "ListSubscriptions",
        pb.ListSubscriptionsRequest(page_size=2, page_token=second.next_page_token, skip=0),
    )
    assert [s.id for s in after.subscriptions] == ids[6:]
    beyond = api.call("ListSubscriptions", pb.ListSubscriptionsRequest(skip=50))
    assert list(beyond.subscriptions) == [] and beyond.total_size == 7


def test_pagination_rejects_bad_sizes_and_tokens(api: Api) -> None:
    for size in (-1, 101):
        details = expect_error(
            INVALID, api.call, "ListSubscriptions", pb.ListSubscriptionsRequest(page_size=size)
        )
        assert "page_size" in details["violations"]
        assert details["reason"] == "INVALID_PAGE_SIZE"
    details = expect_error(
        INVALID, api.call, "ListSubscriptions", pb.ListSubscriptionsRequest(skip=-1)
    )
    assert "skip" in details["violations"] and details["reason"] == "INVALID_SKIP"
    details = expect_error(
        INVALID, api.call, "ListSubscriptions", pb.ListSubscriptionsRequest(page_token="garbage!")
    )
    assert "page_token" in details["violations"] and details["reason"] == "INVALID_PAGE_TOKEN"
    # A token issued to one tenant does not continue another tenant's listing.
    for _ in range(3):
        api.create(as_="alice")
    token = api.call("ListSubscriptions", pb.ListSubscriptionsRequest(page_size=1)).next_page_token
    assert token
    details = expect_error(
        INVALID,
        api.call,
        "ListSubscriptions",
        pb.ListSubscriptionsRequest(page_token=token),
        as_="gina",
    )
    assert details["reason"] == "PAGE_TOKEN_MISMATCH"


def _update(
    api: Api, sub_id: str, paths: list[str], as_: str = "alice", **fields: Any
) -> pb.Subscription:
    request = pb.UpdateSubscriptionRequest(
        subscription=pb.Subscription(id=sub_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )
    response: pb.UpdateSubscriptionResponse = api.call("UpdateSubscription", request, as_=as_)
    return response.subscription


def test_update_with_field_mask_changes_only_masked_fields(api: Api) -> None:
    sub = api.create(
        name="before", description="keep me", event_types=["lead.created"]
    ).subscription
    updated = _update(
        api,
        sub.id,
        ["name", "url"],
        name="after",
        url="https://new.example.com/h",
        description="ignored",
    )
    assert updated.name == "after" and updated.url == "https://new.example.com/h"
    assert updated.description == "keep me" and list(updated.event_types) == ["lead.created"]
    assert updated.update_time.ToDatetime() >= sub.update_time.ToDatetime()
    assert updated.create_time == sub.create_time
    # An empty mask changes the populated fields only (PATCH semantics).
    patched = _update(api, sub.id, [], description="patched")
    assert patched.description == "patched" and patched.name == "after"
    # A masked field set to its default clears it.
    cleared = _update(api, sub.id, ["description", "event_types"])
    assert cleared.description == "" and list(cleared.event_types) == []


def test_update_mask_errors(api: Api) -> None:
    sub = api.create().subscription
    details = expect_error(INVALID, _update, api, sub.id, ["colour"], name="x")
    assert "unknown field colour" in details["violations"]["update_mask"]
    details = expect_error(INVALID, _update, api, sub.id, ["secret_prefix"])
    assert "output only" in details["violations"]["update_mask"]
    details = expect_error(INVALID, _update, api, sub.id, [])
    assert "names no field" in details["violations"]["update_mask"]
    details = expect_error(INVALID, _update, api, sub.id, ["url"], url="ftp://nope")
    assert list(details["violations"]) == ["subscription.url"]
    details = expect_error(
        INVALID, _update, api, sub.id, ["event_types"], event_types=["unknown.thing"]
    )
    assert "unknown event types" in details["violations"]["subscription.event_types"]
    other = api.create(name="taken").subscription
    assert other.id
    expect_error(grpc.StatusCode.ALREADY_EXISTS, _update, api, sub.id, ["name"], name="taken")


def test_disable_and_reenable_clears_reason(api: Api) -> None:
    sub = api.create().subscription
    off = _update(api, sub.id, ["enabled"], enabled=False)
    assert not off.enabled and off.disabled_reason == pb.DISABLED_REASON_MANUAL
    still_off = _update(api, sub.id, ["description"], description="x")
    assert not still_off.enabled and still_off.disabled_reason == pb.DISABLED_REASON_MANUAL
    on = _update(api, sub.id, ["enabled"], enabled=True)
    assert on.enabled and on.disabled_reason == pb.DISABLED_REASON_UNSPECIFIED


def test_only_creator_or_admin_updates_deletes_and_rotates(api: Api) -> None:
    sub = api.create(as_="alice").subscription
    denied = expect_error(
        grpc.StatusCode.PERMISSION_DENIED, _update, api, sub.id, ["name"], as_="bob", name="b"
    )
    assert denied["reason"] == "NOT_CREATOR"
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        api.call,
        "RotateSubscriptionSecret",
        pb.RotateSubscriptionSecretRequest(id=sub.id),
        as_="bob",
    )
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        api.call,
        "DeleteSubscription",
        pb.DeleteSubscriptionRequest(id=sub.id),
        as_="bob",
    )
    assert _update(api, sub.id, ["name"], as_="admin", name="by-admin").name == "by-admin"
    assert _update(api, sub.id, ["name"], as_="alice", name="by-alice").name == "by-alice"
    api.call("DeleteSubscription", pb.DeleteSubscriptionRequest(id=sub.id), as_="admin")
    expect_error(
        grpc.StatusCode.NOT_FOUND, api.call, "GetSubscription", pb.GetSubscriptionRequest(id=sub.id)
    )


def test_sensitive_headers_are_redacted_and_kept_on_update(api: Api) -> None:
    sub = api.create(
        headers={"Authorization": "Bearer receiver-token", "X-Env": "prod"},
        visible_headers=["X-Env"],
    ).subscription
    assert dict(sub.headers) == {"Authorization": "<redacted>", "X-Env": "prod"}
    listed = api.call("ListSubscriptions", pb.ListSubscriptionsRequest()).subscriptions[0]
    assert "receiver-token" not in str(listed)
    # Sending the redacted marker back keeps the stored value; other values change.
    updated = _update(
        api, sub.id, ["headers"], headers={"Authorization": "<redacted>", "X-Env": "staging"}
    )
    assert dict(updated.headers) == {"Authorization": "<redacted>", "X-Env": "staging"}
    store = api_store(api)
    assert store.get("acme", sub.id).spec.headers == {
        "Authorization": "Bearer receiver-token",
        "X-Env": "staging",
    }


def test_rotation_keeps_old_secret_for_overlap_then_revokes(api: Api) -> None:
    created = api.create()
    sub_id, first = created.subscription.id, created.secret
    store = api_store(api)
    assert store.live_secrets(sub_id) == [first]

    rotated = api.call("RotateSubscriptionSecret", pb.RotateSubscriptionSecretRequest(id=sub_id))
    second = rotated.secret
    assert second.startswith("whsec_") and second != first
    assert rotated.subscription.secret_prefix == second[:12]
    assert store.live_secrets(sub_id) == [
        second,
        first,
    ]  # both sign during the default 24 h overlap
    overlap = (
        rotated.subscription.previous_secret_expire_time.ToDatetime()
        - rotated.subscription.update_time.ToDatetime()
    )
    assert abs(overlap.total_seconds() - 86_400) < 5
    got = api.call("GetSubscription", pb.GetSubscriptionRequest(id=sub_id)).subscription
    assert got.secret_prefix == second[:12] and second not in str(got) and first not in str(got)
    listed = api.call("ListSubscriptions", pb.ListSubscriptionsRequest()).subscriptions
    assert [s for s in listed if s.id == sub_id] == [got]  # a page shows what Get shows

    third = api.call(
        "RotateSubscriptionSecret",
        pb.RotateSubscriptionSecretRequest(id=sub_id, overlap=duration_pb2.Duration(seconds=0)),
    )
    assert store.live_secrets(sub_id) == [third.secret]  # overlap 0 revokes every older secret now
    assert not third.subscription.HasField("previous_secret_expire_time")


def test_rotation_overlap_bounds(api: Api) -> None:
    sub_id = api.create().subscription.id
    for seconds in (-1, 7 * 86_400 + 1):
        details = expect_error(
            INVALID,
            api.call,
            "RotateSubscriptionSecret",
            pb.RotateSubscriptionSecretRequest(
                id=sub_id, overlap=duration_pb2.Duration(seconds=seconds)
            ),
        )
        assert "overlap" in details["violations"]
    week = api.call(
        "RotateSubscriptionSecret",
        pb.RotateSubscriptionSecretRequest(
            id=sub_id, overlap=duration_pb2.Duration(seconds=7 * 86_400)
        ),
    )
    assert week.secret


def test_create_is_idempotent_by_request_id(api: Api) -> None:
    request = pb.CreateSubscriptionRequest(
        subscription=pb.Subscription(name="idem", url="https://hooks.example.com/i"),
        request_id="req-1",
    )
    first = api.call("CreateSubscription", request)
    again = api.call("CreateSubscription", request)
    assert again.subscription.id == first.subscription.id
    assert again.secret == first.secret  # the first result, secret included
    assert api.call("ListSubscriptions", pb.ListSubscriptionsRequest()).total_size == 1
    changed = pb.CreateSubscriptionRequest(
        subscription=pb.Subscription(name="other", url="https://hooks.example.com/i"),
        request_id="req-1",
    )
    details = expect_error(INVALID, api.call, "CreateSubscription", changed)
    assert details["reason"] == "REQUEST_ID_REUSED" and "request_id" in details["violations"]
    # The same request_id in another tenant is a different request.
    assert (
        api.call("CreateSubscription", request, as_="gina").subscription.id != first.subscription.id
    )


def test_delete_removes_subscription_and_its_history(api: Api) -> None:
    from service.store.tables import SigningSecretRow, database_proxy

    sub = api.create().subscription
    api.call("RotateSubscriptionSecret", pb.RotateSubscriptionSecretRequest(id=sub.id))
    with database_proxy.obj.connection_context():
        assert SigningSecretRow.select().where(SigningSecretRow.subscription == sub.id).count() == 2
    assert (
        api.call("DeleteSubscription", pb.DeleteSubscriptionRequest(id=sub.id))
        == pb.DeleteSubscriptionResponse()
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        api.call,
        "DeleteSubscription",
        pb.DeleteSubscriptionRequest(id=sub.id),
    )
    with database_proxy.obj.connection_context():
        assert SigningSecretRow.select().where(SigningSecretRow.subscription == sub.id).count() == 0
