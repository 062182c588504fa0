"""Table-driven tests of the pure rules: patterns, validation, masks, pages, keys, ids, settings."""

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import timestamp_pb2

from service.api import convert
from service.config import Settings, SettingsError
from service.crypto import SecretBox, new_encryption_key
from service.domain import event_patterns, fan_out, pagination
from service.domain.access import (
    Principal,
    authenticate,
    expand_scopes,
    hash_key,
    parse_keys,
    require_owner_or_admin,
)
from service.domain.ids import new_id
from service.domain.models import Event, EventType, SubscriptionSpec
from service.domain.signing_secrets import new_secret, secret_prefix
from service.domain.ssrf import address_allowed
from service.domain.updates import resolve_mask
from service.domain.validation import (
    check_headers,
    check_literal_host,
    check_url,
    check_visible_headers,
    merge_redacted,
    redact_headers,
    to_uri,
    validate_subscription,
)
from service.errors import InvalidArgument, PermissionDenied, Unauthenticated
from webhooks.v1 import webhook_service_pb2 as pb

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize(
    ("types", "granted", "event_type", "scope", "matches"),
    [
        ((), (), "lead.created", "", True),
        (("lead.created",), ("leads:subscribe",), "lead.created", "leads:subscribe", True),
        # The type gained the scope after the subscription was made without it (attack run).
        (("lead.created",), ("webhooks:write",), "lead.created", "leads:subscribe", False),
        (("lead.*",), (), "lead.created", "leads:subscribe", False),
        (("lead.*",), ("leads:subscribe",), "lead.created", "leads:subscribe", True),
        (("*",), ("*",), "lead.created", "leads:subscribe", True),
        (("person.*",), (), "lead.created", "", False),
    ],
)
def test_fan_out_matches(
    types: tuple[str, ...], granted: tuple[str, ...], event_type: str, scope: str, matches: bool
) -> None:
    sub = fan_out.Matcher("sub_1", types, frozenset(granted))
    assert fan_out.matches(sub, event_type, scope) is matches


def _event(event_id: str, event_type: str = "person.created", tenant: str = "acme") -> Event:
    return Event(event_id, event_type, tenant, datetime(2026, 1, 1, tzinfo=UTC), b"{}")


def test_plan_jobs_makes_one_job_per_pair_and_keeps_planned_ones() -> None:
    subs = {
        "acme": [
            fan_out.Matcher("a", ("person.*",), frozenset()),
            fan_out.Matcher("b", (), frozenset()),
        ],
        "globex": [fan_out.Matcher("g", (), frozenset())],
    }
    events = [_event("1"), _event("1"), _event("2", "invoice.paid"), _event("3", tenant="globex")]
    jobs = fan_out.plan_jobs(events, subs, {}, lease_until=10.0).jobs
    assert [fan_out.pair(j) for j in jobs] == [
        ("acme", "1", "a"),
        ("acme", "1", "b"),
        ("acme", "2", "b"),
        ("globex", "3", "g"),
    ]
    assert len({j.delivery_id for j in jobs}) == 4 and jobs[0].body is jobs[1].body
    planned = {fan_out.pair(jobs[1]): jobs[1]}
    again = fan_out.plan_jobs(events, subs, {}, 10.0, planned=planned).jobs
    assert again[1] is jobs[1] and again[0].delivery_id != jobs[0].delivery_id


@pytest.mark.parametrize(
    ("item", "event_type", "matches"),
    [
        ("*", "lead.created", True),
        ("lead.*", "lead.created", True),
        ("lead.*", "lead.notes.added", True),
        ("lead.*", "leads.created", False),
        ("lead.*", "lead", False),
        ("lead.created", "lead.created", True),
        ("lead.created", "lead.updated", False),
        ("lead-created", "lead-created", True),
    ],
)
def test_pattern_matches(item: str, event_type: str, matches: bool) -> None:
    assert event_patterns.pattern_matches(item, event_type) is matches


@pytest.mark.parametrize(
    ("items", "event_type", "matches"),
    [((), "anything.at.all", True), (("a.b",), "a.c", False), (("a.b", "c.*"), "c.d", True)],
)
def test_subscription_matches(items: tuple[str, ...], event_type: str, matches: bool) -> None:
    assert event_patterns.subscription_matches(items, event_type) is matches


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("lead.created", True),
        ("lead-created", True),
        ("a", True),
        ("a..b", False),
        (".a", False),
        ("a b", False),
        ("a.*", False),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
    ],
)
def test_event_type_names(name: str, valid: bool) -> None:
    assert event_patterns.is_valid_name(name) is valid


@pytest.mark.parametrize(
    ("url", "allow_http", "problem"),
    [
        ("https://hooks.example.com/a?b=c", False, None),
        ("https://hooks.example.com:8443/a", False, None),
        ("https://xn--bcher-kva.example/", False, None),
        ("https://bücher.example/", False, None),
        ("https://bücher..example/", False, "not a valid name"),
        ("https://\uff11\uff12\uff17.0.0.1/", False, "non-public"),  # full-width digits
        ("https://127\u30020\u30020\u30021/", False, "non-public"),  # ideographic dots
        ("http://hooks.example.com/", False, "must use https"),
        ("http://hooks.example.com/", True, None),
        ("ftp://hooks.example.com/", True, "must use https or http"),
        ("https:///path", False, "must have a host"),
        ("https://hooks.example.com:99999/", False, "not a valid URL"),
        ("https://hooks.example.com:0/", False, "port must be"),
        ("https://a@hooks.example.com/", False, "credentials"),
        ("https://hooks.example.com/#frag", False, "fragment"),
        ("https://hooks.example.com/a b", False, "spaces"),
        ("https://bad_host!.com/", False, "not a valid name"),
        ("https://192.168.1.10/", False, "non-public"),
        ("https://169.254.169.254/latest/meta-data", False, "non-public"),
        ("https://[::1]/", False, "non-public"),
        ("https://[fd00::1]/", False, "non-public"),
        ("https://[::ffff:10.0.0.1]/", False, "non-public"),
        ("https://0.0.0.0/", False, "non-public"),
        ("https://LOCALHOST/", False, "non-public"),
        ("https://api.localhost/", False, "non-public"),
        ("https://8.8.8.8/", False, None),
        ("https://2130706433/", False, "non-public"),
        ("https://0177.0.0.1/", False, "non-public"),
        ("https://0x7f.1/", False, "non-public"),
        ("https://134744072/", False, None),
        ("https://[::127.0.0.1]/", False, "non-public"),
        ("https://[64:ff9b::7f00:1]/", False, "non-public"),
        ("https://[64:ff9b::808:808]/", False, None),
        ("https://[64:ff9b:1::1]/", False, "non-public"),
        ("https://[2002:7f00:1::]/", False, "non-public"),
        ("https://[::ffff:0:7f00:1]/", False, "non-public"),
        ("https://127.1/", False, "non-public"),
        ("https://0/", False, "non-public"),
        ("https://[::]/", False, "non-public"),
    ],
)
def test_check_url(url: str, allow_http: bool, problem: str | None) -> None:
    # As the use cases do: an IRI becomes a URI first.
    violations = check_url("url", to_uri(url), allow_http=allow_http, allow_cidrs=())
    if problem is None:
        assert violations == []
    else:
        assert len(violations) == 1 and problem in violations[0].description


@pytest.mark.parametrize(
    ("address", "allow", "allowed"),
    [
        ("8.8.8.8", (), True),
        ("2001:4860:4860::8888", (), True),
        ("127.0.0.1", (), False),
        ("10.1.2.3", (), False),
        ("100.64.0.1", (), False),  # carrier-grade NAT
        ("169.254.169.254", (), False),  # cloud metadata
        ("224.0.0.1", (), False),
        ("255.255.255.255", (), False),
        ("::1", (), False),
        ("fe80::1", (), False),
        ("fc00::1", (), False),
        ("::ffff:127.0.0.1", (), False),  # IPv4-mapped
        ("::ffff:8.8.8.8", (), True),
        ("::127.0.0.1", (), False),  # IPv4-compatible (deprecated)
        ("::8.8.8.8", (), True),
        ("2002:a00:1::", (), False),  # 6to4 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", (), False),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", (), True),
        ("64:ff9b:1::8.8.8.8", (), False),  # local-use NAT64
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", (), False),  # Teredo
        # Python 3.11's is_global calls these global (attack run; CVE-2024-4032).
        ("fec0::1", (), False),  # site-local
        ("192.0.0.9", (), False),  # IETF protocol assignments
        ("5f00::1", (), False),  # SRv6 SIDs
        ("192.88.99.1", (), False),  # 6to4 relay anycast
        ("3fff::1", (), False),  # documentation
        ("::ffff:192.0.0.9", (), False),
        ("100::1", (), False),
        ("2620:4f:8000::1", (), False),
        ("1.1.1.1", (), True),
        ("2606:4700:4700::1111", (), True),
        ("127.0.0.1", LOOPBACK, True),
        ("::ffff:127.0.0.1", LOOPBACK, True),
        ("::1", LOOPBACK, False),
    ],
)
def test_address_allowed(address: str, allow: Any, allowed: bool) -> None:
    assert address_allowed(ipaddress.ip_address(address), allow) is allowed


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", False),
        ("10.0.0.1", False),
        ("example.com", True),
    ],
)
def test_literal_hosts_with_allow_list(host: str, allowed: bool) -> None:
    assert (check_literal_host(host, LOOPBACK) is None) is allowed


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"X-Custom": "v", "Authorization": "Bearer t"}, None),
        ({"Content-Type": "text/plain"}, "set by the service"),
        ({"Webhook-Id": "x"}, "set by the service"),
        ({"X-A": "line\r\nbreak"}, "RFC 9110"),
        ({"X-A": "v" * 4097}, "RFC 9110"),
        ({"X-A": "Jos\u00e9"}, "RFC 9110"),
        ({"X-A": " lead"}, "RFC 9110"),
        ({"X-A": "trail\t"}, "RFC 9110"),
        ({"X-A": ""}, "RFC 9110"),
        ({"X-A": "in side\tand"}, None),
        ({"X A": "v"}, "not a valid header name"),
        ({"x-dup": "1", "X-Dup": "2"}, "letter case"),
        ({f"X-{i}": "v" for i in range(21)}, "at most 20"),
    ],
)
def test_check_headers(headers: dict[str, str], problem: str | None) -> None:
    violations = check_headers("headers", headers)
    if problem is None:
        assert violations == []
    else:
        assert any(problem in v.description for v in violations), violations


def test_header_redaction_round_trip() -> None:
    stored = {"Authorization": "Bearer s3cret", "X-Credential": "k", "X-Team": "crm"}
    # Write-only unless named visible: X-Credential, X-Jwt, Cookie2... all read redacted.
    shown = redact_headers(stored, ("x-team",))
    assert shown == {"Authorization": "<redacted>", "X-Credential": "<redacted>", "X-Team": "crm"}
    assert merge_redacted({**shown, "X-Team": "ops"}, stored, same_host=True) == (
        {**stored, "X-Team": "ops"},
        [],
    )
    assert merge_redacted({"Authorization": "Bearer new"}, stored, same_host=True) == (
        {"Authorization": "Bearer new"},
        [],
    )
    # A new host gets no stored credential it was not given anew.
    assert merge_redacted(shown, stored, same_host=False) == (
        {"X-Team": "crm"},
        ["Authorization", "X-Credential"],
    )


@pytest.mark.parametrize(
    ("visible", "problem"),
    [
        (("X-Team",), None),
        (("x-team",), None),
        (("X-Other",), "names no header"),
        (("Authorization",), "always write-only"),
    ],
)
def test_check_visible_headers(visible: tuple[str, ...], problem: str | None) -> None:
    violations = check_visible_headers("v", visible, {"Authorization": "Bearer t", "X-Team": "crm"})
    assert [v.description for v in violations if problem and problem in v.description] or (
        problem is None and not violations
    )


def test_validate_subscription_event_types_against_catalog() -> None:
    catalog = {n: EventType(name=n) for n in ("lead.created", "lead.updated", "person.created")}

    def problems(items: tuple[str, ...]) -> list[str]:
        spec = SubscriptionSpec(name="n", url="https://example.com/", event_types=items)
        return [
            v.description
            for v in validate_subscription(spec, catalog=catalog, allow_http=False, allow_cidrs=())
        ]

    assert problems(()) == []
    assert problems(("*",)) == []
    assert problems(("lead.*", "person.created")) == []
    assert problems(("lead.created", "lead.created")) == ["must not repeat an event type"]
    assert problems(("x.y", "z")) == ["unknown event types: x.y, z"]
    assert problems(("invoice.*",)) == ["patterns match no event type: invoice.*"]
    assert problems(("lead.**",)) == ["malformed event types: lead.**"]
    assert problems(tuple(f"t{i}" for i in range(101))) == ["must name at most 100 event types"]


@pytest.mark.parametrize(
    ("paths", "populated", "result"),
    [
        ([], ["name"], {"name"}),
        (["*"], [], {"name", "url", "enabled"}),
        (["url"], ["name"], {"url"}),
    ],
)
def test_resolve_mask(paths: list[str], populated: list[str], result: set[str]) -> None:
    mask = resolve_mask(
        paths, allowed=("name", "url", "enabled"), output_only=("id",), populated=populated
    )
    assert mask == result


@pytest.mark.parametrize(
    ("paths", "populated", "problem"),
    [
        ([], [], "names no field"),
        (["id"], [], "output only"),
        (["colour"], [], "unknown field colour"),
    ],
)
def test_resolve_mask_errors(paths: list[str], populated: list[str], problem: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        resolve_mask(paths, allowed=("name",), output_only=("id",), populated=populated)
    assert problem in caught.value.violations[0].description


def test_page_tokens_round_trip_and_are_bound_to_their_query() -> None:
    query = pagination.query_fingerprint("subscriptions", "acme")
    token = pagination.encode_token("sub_123", query)
    assert pagination.decode_token(token, query) == "sub_123"
    assert pagination.decode_token("", query) is None
    for bad_token, fingerprint in [
        (token, pagination.query_fingerprint("x")),
        ("%%%", query),
        ("e30", query),
    ]:
        with pytest.raises(InvalidArgument):
            pagination.decode_token(bad_token, fingerprint)


@pytest.mark.parametrize(("requested", "size"), [(0, 50), (1, 1), (100, 100)])
def test_page_size(requested: int, size: int) -> None:
    assert pagination.page_size(requested) == size


@pytest.mark.parametrize(
    ("requested", "ok"), [(0, True), (250, True), (100_000, True), (-1, False), (100_001, False)]
)
def test_skip(requested: int, ok: bool) -> None:
    if ok:
        assert pagination.skip(requested) == requested
    else:
        with pytest.raises(InvalidArgument):
            pagination.skip(requested)


def test_ids_sort_by_creation_time() -> None:
    ids = [new_id("sub", now_ms=ms) for ms in (1, 2, 1000, 10**12, 2**47)]
    assert ids == sorted(ids)
    assert all(len(i) == len("sub_") + 26 for i in ids)
    assert len({new_id("sub", now_ms=5) for _ in range(100)}) == 100


@pytest.mark.parametrize(
    ("ms", "time_part"),
    [
        (0, "0000000000"),
        (1, "0000000001"),
        (32, "0000000010"),
        (1_700_000_000_000, "01HF7YAT00"),
        (2**48 - 1, "7ZZZZZZZZZ"),
    ],
)
def test_id_time_part_is_crockford_base32_of_the_milliseconds(ms: int, time_part: str) -> None:
    value = new_id("msg", now_ms=ms)
    assert value[4:14] == time_part
    assert set(value[14:]) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_secrets_and_prefixes() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 44
    assert secret_prefix(secret) == secret[:12] and secret_prefix(secret) != secret
    assert new_secret() != secret


def test_secret_box_rotates_keys_and_never_echoes_tokens() -> None:
    old, new = new_encryption_key(), new_encryption_key()
    token = SecretBox([old]).encrypt("whsec_x")
    assert b"whsec_x" not in token
    assert SecretBox([new, old]).decrypt(token) == "whsec_x"
    with pytest.raises(ValueError, match="cannot be decrypted") as caught:
        SecretBox([new]).decrypt(token)
    assert token.decode() not in str(caught.value)


KEY = "whk_test_key"
KEYS_DOC = {
    "keys": [
        {
            "id": "a",
            "sha256": hash_key(KEY),
            "tenant": "acme",
            "principal": "alice",
            "scopes": ["webhooks:write"],
        },
        {"sha256": hash_key("old"), "tenant": "acme", "scopes": [], "revoked": True},
    ]
}


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "MISSING_API_KEY"),
        ("", "MISSING_API_KEY"),
        ("Bearer", "MALFORMED_API_KEY"),
        (f"Token {KEY}", "MALFORMED_API_KEY"),
        ("Bearer nope", "INVALID_API_KEY"),
        ("Bearer old", "INVALID_API_KEY"),  # revoked: told apart only in the service's log
    ],
)
def test_authenticate_refusals(header: str | None, reason: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        authenticate(parse_keys(KEYS_DOC), header)
    assert caught.value.reason == reason


def test_authenticate_and_scope_implication() -> None:
    principal = authenticate(parse_keys(KEYS_DOC), f"bearer  {KEY} ")
    assert principal.tenant == "acme" and principal.name == "alice"
    assert principal.has("webhooks:read") and not principal.has("webhooks:admin")
    assert expand_scopes(["webhooks:admin"]) == {
        "webhooks:admin",
        "webhooks:write",
        "webhooks:read",
    }


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ([], '"keys" list'),
        ({"keys": [{"sha256": "abc", "tenant": "t"}]}, "64 hex digits"),
        ({"keys": [{"sha256": "a" * 64, "tenant": ""}]}, "tenant"),
        (
            {"keys": [{"sha256": "a" * 64, "tenant": "t", "scopes": "webhooks:read"}]},
            "list of strings",
        ),
        (
            {"keys": [{"sha256": "a" * 64, "tenant": "t"}, {"sha256": "A" * 64, "tenant": "u"}]},
            "repeats a key",
        ),
    ],
)
def test_keys_file_errors(document: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_keys(document)


def test_owner_or_admin() -> None:
    alice = Principal("k1", "acme", "alice", frozenset({"webhooks:write"}))
    admin = Principal("k2", "acme", "root", frozenset({"webhooks:admin"}))
    require_owner_or_admin(alice, "alice")
    require_owner_or_admin(admin, "alice")
    with pytest.raises(PermissionDenied):
        require_owner_or_admin(alice, "bob")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}')
    return {
        "WEBHOOKS_API_KEYS_FILE": str(keys),
        "WEBHOOKS_SECRET_ENCRYPTION_KEYS": new_encryption_key(),
        **extra,
    }


def test_settings_defaults_and_parsing(tmp_path: Path) -> None:
    settings = Settings.from_env(_env(tmp_path))
    assert settings.grpc_address == "127.0.0.1:50051"
    assert settings.kafka_bootstrap_servers == "localhost:9092"
    assert settings.database_url == "sqlite:///webhooks.db"
    assert settings.kafka_topics == ("domain-events",)
    assert settings.rotation_overlap_seconds == 86_400
    custom = Settings.from_env(
        _env(
            tmp_path,
            WEBHOOKS_TENANT_QUOTAS="acme=3, globex=0",
            WEBHOOKS_SSRF_ALLOW_CIDRS="10.0.0.0/8,::1/128",
        )
    )
    assert (
        custom.quota_for("acme") == 3
        and custom.quota_for("globex") == 0
        and custom.quota_for("x") == 100
    )
    assert len(custom.ssrf_allow_cidrs) == 2


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"WEBHOOKS_DATABASE_URL": "mysql://x"}, "must start with sqlite:///"),
        ({"WEBHOOKS_SECRET_ENCRYPTION_KEYS": "short"}, "32 url-safe base64 bytes"),
        ({"WEBHOOKS_TENANT_QUOTAS": "acme"}, "tenant=number"),
        ({"WEBHOOKS_TLS_CERT_FILE": "/nonexistent.pem"}, "go together"),
        ({"WEBHOOKS_ROTATION_OVERLAP_SECONDS": "604801"}, "between 0 and 604800"),
        ({"WEBHOOKS_KAFKA_TOPICS": " , "}, "at least one"),
        ({"WEBHOOKS_LOG_LEVEL": "loud"}, "DEBUG, INFO"),
    ],
)
def test_settings_errors(tmp_path: Path, extra: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        Settings.from_env(_env(tmp_path, **extra))


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 23, 12, 0, 0, 123456),
        datetime(1, 1, 1),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
        datetime(1969, 12, 31, 23, 59, 59, 500000),
    ],
)
def test_timestamps_equal_protobufs_own_conversion(moment: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment.replace(tzinfo=UTC))
    assert timestamp_pb2.Timestamp(**convert.timestamp(moment)) == expected  # type: ignore[arg-type]
    message = pb.Subscription()
    convert._set_times(message, create_time=moment, update_time=None)
    assert message.create_time == expected and not message.HasField("update_time")


def test_a_delivery_id_is_the_same_for_the_same_record_and_subscription() -> None:
    read = replace(_event("1"), record_time_ms=1_700_000_000_000)
    again = fan_out.delivery_id(read, "sub_a")
    assert again == fan_out.delivery_id(read, "sub_a") and again.startswith("msg_")
    assert fan_out.delivery_id(read, "sub_b") != again
    later = replace(read, record_time_ms=read.record_time_ms + 1)
    assert fan_out.delivery_id(later, "sub_a") > again  # still sorted by time
    no_record = _event("1")
    assert fan_out.delivery_id(no_record, "sub_a") != fan_out.delivery_id(no_record, "sub_a")
