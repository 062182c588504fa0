"""Validation rules for subscriptions and event types; each returns field violations."""

import ipaddress
import json
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import idna
import jsonschema_rs

from service.domain import event_patterns
from service.domain.models import EventType, SubscriptionSpec
from service.domain.ssrf import address_allowed
from service.errors import FieldViolation

MAX_NAME = 255
MAX_DESCRIPTION = 1024
MAX_URL = 2048
MAX_EVENT_TYPES = 100
MAX_HEADERS = 20
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 4096
MAX_RATE_LIMIT = 100_000
MAX_SCOPE = 128
MAX_JSON_TEXT = 64 * 1024

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 9110 field-value, ASCII only: visible characters, inner spaces and tabs. libcurl
# sends header text as bytes, and other text has no one agreed encoding.
_FIELD_VALUE = re.compile(r"[\x21-\x7e]([\t\x20-\x7e]*[\x21-\x7e])?")
# What stays as it is in a path or query when an IRI becomes a URI (RFC 3986 reserved and
# unreserved characters, and existing percent escapes).
_URI_SAFE = "/?:@!$&'()*+,;=-._~%"
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_SCOPE = re.compile(r"[A-Za-z0-9_.-]+:[A-Za-z0-9_.*-]+")
# The service sets these itself; a subscription may not override them.
_RESERVED_HEADERS = frozenset(
    {"host", "content-type", "content-length", "transfer-encoding", "connection", "user-agent"}
)
_RESERVED_HEADER_PREFIX = "webhook-"
# Never shown, whatever visible_headers says.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
REDACTED = "<redacted>"


def validate_subscription(
    spec: SubscriptionSpec,
    *,
    catalog: Mapping[str, EventType],
    allow_http: bool,
    allow_cidrs: Sequence[IpNetwork],
    prefix: str = "subscription",
) -> list[FieldViolation]:
    """Every rule a subscription's fields must satisfy, as violations (empty = valid)."""
    out: list[FieldViolation] = []
    out += _check_text(f"{prefix}.name", spec.name, MAX_NAME, required=True)
    out += _check_text(f"{prefix}.description", spec.description, MAX_DESCRIPTION)
    out += check_url(f"{prefix}.url", spec.url, allow_http=allow_http, allow_cidrs=allow_cidrs)
    out += check_event_types(f"{prefix}.event_types", spec.event_types, catalog)
    out += check_headers(f"{prefix}.headers", spec.headers)
    out += check_visible_headers(f"{prefix}.visible_headers", spec.visible_headers, spec.headers)
    if not 0 <= spec.rate_limit_per_second <= MAX_RATE_LIMIT:
        out.append(
            FieldViolation(
                f"{prefix}.rate_limit_per_second",
                f"must be between 0 and {MAX_RATE_LIMIT}",
                "RATE_LIMIT_OUT_OF_RANGE",
            )
        )
    return out


def _check_text(
    field: str, value: str, limit: int, *, required: bool = False
) -> list[FieldViolation]:
    if required and not value.strip():
        return [FieldViolation(field, "is required", "FIELD_REQUIRED")]
    if len(value) > limit:
        return [FieldViolation(field, f"must be at most {limit} characters", "FIELD_TOO_LONG")]
    if _CONTROL.search(value):
        return [FieldViolation(field, "must not contain control characters", "CONTROL_CHARACTERS")]
    return []


def check_url(
    field: str, url: str, *, allow_http: bool, allow_cidrs: Sequence[IpNetwork]
) -> list[FieldViolation]:
    """The endpoint URL: https (or http in development), a host, no user info or fragment."""
    if not url:
        return [FieldViolation(field, "is required", "FIELD_REQUIRED")]
    if len(url) > MAX_URL:
        return [FieldViolation(field, f"must be at most {MAX_URL} characters", "FIELD_TOO_LONG")]
    if _CONTROL.search(url) or " " in url:
        return [
            FieldViolation(field, "must not contain spaces or control characters", "URL_INVALID")
        ]
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        return [FieldViolation(field, "is not a valid URL", "URL_INVALID")]
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        return [
            FieldViolation(
                field,
                "must use https" if not allow_http else "must use https or http",
                "URL_NOT_HTTPS",
            )
        ]
    if parts.username is not None or parts.password is not None:
        return [
            FieldViolation(
                field, "must not contain credentials; use a custom header", "URL_HAS_CREDENTIALS"
            )
        ]
    if parts.fragment:
        return [FieldViolation(field, "must not contain a fragment", "URL_HAS_FRAGMENT")]
    if not url.isascii():  # to_uri turned every IRI with a valid host into a URI
        return [FieldViolation(field, "host is not a valid name", "URL_BAD_HOST")]
    host = parts.hostname or ""
    if not host:
        return [FieldViolation(field, "must have a host", "URL_BAD_HOST")]
    if port == 0:
        return [FieldViolation(field, "port must be between 1 and 65535", "URL_BAD_PORT")]
    problem = check_literal_host(host, allow_cidrs)
    return [FieldViolation(field, *problem)] if problem else []


def to_uri(url: str) -> str:
    """An IRI as the URI that names it: non-ASCII host labels in IDNA (UTS 46 also maps
    full-width digits and ideographic dots, so such a form of 127.0.0.1 is checked as
    that), other non-ASCII characters percent-encoded as UTF-8. ASCII URLs, and IRIs that
    name no valid host, come back unchanged for check_url to judge."""
    if url.isascii():
        return url
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        if not host.isascii():
            host = idna.encode(host, uts46=True).decode("ascii")
    except (ValueError, idna.IDNAError):
        return url
    netloc = f"{host}:{port}" if port is not None else host
    if parts.username is not None or parts.password is not None:
        return url  # check_url refuses credentials; keep what the caller wrote
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            quote(parts.path, safe=_URI_SAFE),
            quote(parts.query, safe=_URI_SAFE),
            quote(parts.fragment, safe=_URI_SAFE),
        )
    )


def check_literal_host(host: str, allow_cidrs: Sequence[IpNetwork]) -> tuple[str, str] | None:
    """Refuses hosts that are visibly internal before any DNS lookup.

    Names are resolved and checked again at delivery time; this catches the obvious
    cases (IP literals, `localhost`) at create time with a clear message.
    """
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address("127.0.0.1")
    else:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            numeric = _numeric_ipv4(name)
            if numeric is None:
                return (
                    None if _valid_hostname(name) else ("host is not a valid name", "URL_BAD_HOST")
                )
            address = numeric
    if address_allowed(address, allow_cidrs):
        return None
    return ("host is a non-public address, which is not allowed", "URL_HOST_NOT_PUBLIC")


def _numeric_ipv4(name: str) -> ipaddress.IPv4Address | None:
    """Decimal, octal and hex forms (`2130706433`, `0177.1`, `0x7f.1`) that resolvers accept
    as IPv4 addresses although they are not dotted quads."""
    if not re.fullmatch(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}", name):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        return None


def _valid_hostname(name: str) -> bool:
    try:
        encoded = name.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = encoded.split(".")
    return len(encoded) <= 253 and all(
        0 < len(label) <= 63 and re.fullmatch(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?", label)
        for label in labels
    )


def check_event_types(
    field: str, items: Sequence[str], catalog: Mapping[str, EventType]
) -> list[FieldViolation]:
    """Exact names must be in the catalog; patterns must be well formed and match something."""
    if len(items) > MAX_EVENT_TYPES:
        return [
            FieldViolation(
                field, f"must name at most {MAX_EVENT_TYPES} event types", "TOO_MANY_EVENT_TYPES"
            )
        ]
    malformed = [
        i for i in items if event_patterns.is_pattern(i) and not event_patterns.is_valid_pattern(i)
    ]
    malformed += [
        i for i in items if not event_patterns.is_pattern(i) and not event_patterns.is_valid_name(i)
    ]
    if malformed:
        return [
            FieldViolation(
                field, f"malformed event types: {', '.join(malformed)}", "MALFORMED_EVENT_TYPES"
            )
        ]
    unknown = [i for i in items if not event_patterns.is_pattern(i) and i not in catalog]
    if unknown:
        return [
            FieldViolation(
                field, f"unknown event types: {', '.join(unknown)}", "UNKNOWN_EVENT_TYPES"
            )
        ]
    empty = [
        i
        for i in items
        if i != event_patterns.WILDCARD
        and event_patterns.is_pattern(i)
        and not any(event_patterns.pattern_matches(i, name) for name in catalog)
    ]
    if empty:
        return [
            FieldViolation(
                field,
                f"patterns match no event type: {', '.join(empty)}",
                "PATTERN_MATCHES_NOTHING",
            )
        ]
    if len(set(items)) != len(items):
        return [FieldViolation(field, "must not repeat an event type", "DUPLICATE_EVENT_TYPES")]
    return []


def check_headers(field: str, headers: Mapping[str, str]) -> list[FieldViolation]:
    """Custom headers: valid tokens, printable values, none that the service sets itself."""
    if len(headers) > MAX_HEADERS:
        return [
            FieldViolation(field, f"must have at most {MAX_HEADERS} entries", "TOO_MANY_HEADERS")
        ]
    out: list[FieldViolation] = []
    seen: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        where = f"{field}[{name!r}]"
        if not _HEADER_NAME.fullmatch(name) or len(name) > MAX_HEADER_NAME:
            out.append(FieldViolation(where, "is not a valid header name", "BAD_HEADER_NAME"))
        elif lower in _RESERVED_HEADERS or lower.startswith(_RESERVED_HEADER_PREFIX):
            out.append(
                FieldViolation(
                    where, "is set by the service and cannot be overridden", "RESERVED_HEADER"
                )
            )
        elif lower in seen:
            out.append(
                FieldViolation(where, "is repeated with different letter case", "DUPLICATE_HEADER")
            )
        elif len(value) > MAX_HEADER_VALUE or not _FIELD_VALUE.fullmatch(value):
            out.append(
                FieldViolation(
                    where,
                    f"value must be 1 to {MAX_HEADER_VALUE} visible ASCII characters, spaces"
                    " and tabs between them (RFC 9110 field-value)",
                    "BAD_HEADER_VALUE",
                )
            )
        seen.add(lower)
    return out


def check_visible_headers(
    field: str, visible: Sequence[str], headers: Mapping[str, str]
) -> list[FieldViolation]:
    """Each name must be one of the headers, and not a credential header."""
    names = {name.lower() for name in headers}
    out = []
    for name in visible:
        if name.lower() not in names:
            out.append(
                FieldViolation(
                    f"{field}[{name!r}]", "names no header of this subscription", "UNKNOWN_HEADER"
                )
            )
        elif name.lower() in _CREDENTIAL_HEADERS:
            out.append(
                FieldViolation(
                    f"{field}[{name!r}]", "is a credential: always write-only", "CREDENTIAL_HEADER"
                )
            )
    return out


def redact_headers(headers: Mapping[str, str], visible: Sequence[str]) -> dict[str, str]:
    """Headers as shown to callers: every value `<redacted>` but those of `visible`."""
    shown = {name.lower() for name in visible}
    return {k: (v if k.lower() in shown else REDACTED) for k, v in headers.items()}


def merge_redacted(
    new: Mapping[str, str], stored: Mapping[str, str], *, same_host: bool
) -> tuple[dict[str, str], list[str]]:
    """Headers for an update: a `<redacted>` value sent back keeps the stored value, but only
    for the same host; also the names whose value must be given again for a new host."""
    merged, again = {}, []
    for name, value in new.items():
        if value == REDACTED and name in stored:
            if same_host:
                merged[name] = stored[name]
            else:
                again.append(name)
        else:
            merged[name] = value
    return merged, again


def same_host(url: str, other: str) -> bool:
    """Whether two URLs name the same host (a header credential may follow only then)."""
    try:
        return urlsplit(url).hostname == urlsplit(other).hostname
    except ValueError:
        return False


def validate_event_type(event_type: EventType, prefix: str = "event_type") -> list[FieldViolation]:
    """Name, scope, JSON Schema (draft 2020-12) and an example that satisfies the schema."""
    out: list[FieldViolation] = []
    if not event_type.name:
        out.append(FieldViolation(f"{prefix}.name", "is required", "FIELD_REQUIRED"))
    elif not event_patterns.is_valid_name(event_type.name):
        out.append(
            FieldViolation(
                f"{prefix}.name",
                "must be 1 to 128 letters, digits, '_', '-' separated by '.'",
                "BAD_EVENT_TYPE_NAME",
            )
        )
    out += _check_text(f"{prefix}.description", event_type.description, MAX_DESCRIPTION)
    scope = event_type.required_scope
    if scope and (len(scope) > MAX_SCOPE or not _SCOPE.fullmatch(scope)):
        out.append(
            FieldViolation(
                f"{prefix}.required_scope", "must look like `domain:action`", "BAD_SCOPE"
            )
        )
    schema = _parse_json(f"{prefix}.json_schema", event_type.json_schema, out)
    validator = None
    if schema is not None and not isinstance(schema, dict | bool):
        out.append(
            FieldViolation(f"{prefix}.json_schema", "must be a JSON object", "BAD_JSON_SCHEMA")
        )
    elif isinstance(schema, dict | bool):
        try:
            validator = compile_schema(schema)
        except ValueError as exc:
            out.append(FieldViolation(f"{prefix}.json_schema", str(exc), "BAD_JSON_SCHEMA"))
    example = _parse_json(f"{prefix}.example_json", event_type.example_json, out)
    if validator is not None and example is not None:
        problem = schema_violation(validator, example)
        if problem:
            out.append(
                FieldViolation(
                    f"{prefix}.example_json",
                    f"does not match the schema: {problem}",
                    "EXAMPLE_NOT_MATCHING_SCHEMA",
                )
            )
    return out


def compile_schema(schema: dict[str, Any] | bool) -> jsonschema_rs.Validator:
    """A JSON Schema (draft 2020-12) ready to validate, or ValueError saying why not.

    Regexes run on Rust's linear-time engine: a pattern like `^(a|aa)+$` cannot stall the
    service, and ECMA-262 features it lacks (lookaround, backreferences) are refused here.
    `$ref`s must resolve within the schema: nothing is fetched."""
    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        where = "/".join(str(p) for p in exc.instance_path)
        raise ValueError(
            f"is not a valid JSON Schema: {_first_line(exc.message)} (at /{where})"
        ) from None
    try:
        return jsonschema_rs.Draft202012Validator(
            schema, pattern_options=jsonschema_rs.RegexOptions(), offline=True
        )
    except jsonschema_rs.ValidationError as exc:
        raise ValueError(f"cannot be used: {_first_line(exc.message)}") from None


def _first_line(message: object) -> str:
    return str(message).splitlines()[0][:300]


def schema_violation(validator: jsonschema_rs.Validator, data: object) -> str | None:
    """The first way `data` breaks the schema, or None when it conforms."""
    error = next(validator.iter_errors(data), None)
    return None if error is None else _first_line(error.message)


def _parse_json(field: str, text: str, out: list[FieldViolation]) -> object | None:
    if not text:
        return None
    if len(text) > MAX_JSON_TEXT:
        out.append(
            FieldViolation(field, f"must be at most {MAX_JSON_TEXT} characters", "FIELD_TOO_LONG")
        )
        return None
    try:
        return json.loads(text)  # type: ignore[no-any-return]
    except (ValueError, RecursionError):
        out.append(FieldViolation(field, "is not valid JSON", "INVALID_JSON"))
        return None
