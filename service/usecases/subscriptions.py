"""Subscription use cases: validation, authorization and the store, in one place."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from service.config import Settings
from service.domain import event_patterns, filters, payloads
from service.domain.access import (
    Principal,
    missing_subscribe_scopes,
    require_owner_or_admin,
    require_secret_proof,
)
from service.domain.models import (
    EventType,
    Payload,
    PayloadFormat,
    Subscription,
    SubscriptionSpec,
)
from service.domain.signing_secrets import new_secret
from service.domain.validation import merge_redacted, same_host, to_uri, validate_subscription
from service.errors import FieldViolation, InvalidArgument, PermissionDenied, invalid
from service.store.event_types import EventTypeStore
from service.store.subscriptions import Change, SubscriptionStore

UPDATABLE = (
    "name",
    "description",
    "url",
    "event_types",
    "enabled",
    "headers",
    "visible_headers",
    "rate_limit_per_second",
    "payload_format",
    "payload_template",
    "filter",
    "ordering",
)
OUTPUT_ONLY = (
    "id",
    "disabled_reason",
    "secret_prefix",
    "created_by",
    "create_time",
    "update_time",
    "last_delivery_time",
    "last_delivery_status",
    "previous_secret_expire_time",
)
PAYLOAD_FIELDS = frozenset({"payload_format", "payload_template"})
MAX_REQUEST_ID = 128
MAX_OVERLAP = timedelta(days=7)


@dataclass(frozen=True)
class UpdatePreview:
    """An update as it would be stored, and the secrets that sign for the subscription."""

    spec: SubscriptionSpec
    url_changed: bool
    secrets: list[str]


class SubscriptionService:
    """Every method is synchronous; the gRPC edge runs it on a store thread."""

    def __init__(
        self, store: SubscriptionStore, event_types: EventTypeStore, settings: Settings
    ) -> None:
        self._store = store
        self._event_types = event_types
        self._settings = settings
        self._names_per_creator = settings.subscription_names_unique_per == "principal"

    def check_create(
        self, principal: Principal, spec: SubscriptionSpec, request_id: str = ""
    ) -> SubscriptionSpec:
        """The spec as `create` would store it, or the error `create` would raise."""
        spec = replace(spec, url=to_uri(spec.url))
        catalog = self._event_types.catalog()
        violations = self._violations(spec, catalog)
        if len(request_id) > MAX_REQUEST_ID:
            violations.append(
                FieldViolation(
                    "request_id", f"must be at most {MAX_REQUEST_ID} characters", "FIELD_TOO_LONG"
                )
            )
        if violations:
            raise InvalidArgument(violations)
        _check_subscribe_scopes(principal, spec.event_types, catalog)
        return spec

    def create(
        self,
        principal: Principal,
        spec: SubscriptionSpec,
        request_id: str = "",
        request_hash: str = "",
        secret: str | None = None,
    ) -> tuple[Subscription, str]:
        """Returns the new subscription and its secret (the only time the secret is shown);
        `secret` is one made beforehand (a verification ping was signed with it)."""
        spec = self.check_create(principal, spec, request_id)
        return self._store.create(
            tenant=principal.tenant,
            created_by=principal.name,
            spec=spec,
            granted_scopes=_granted(principal),
            secret=secret or new_secret(),
            names_per_creator=self._names_per_creator,
            quota=self._settings.quota_for(principal.tenant),
            request_id=request_id,
            request_hash=request_hash,
        )

    def get(self, principal: Principal, subscription_id: str) -> Subscription:
        return self._store.get(principal.tenant, subscription_id)

    def list_page(
        self, principal: Principal, after: str | None, limit: int, skip: int = 0
    ) -> tuple[list[Subscription], bool, int]:
        return self._store.list_page(principal.tenant, after, limit, skip)

    def update(
        self,
        principal: Principal,
        subscription_id: str,
        values: SubscriptionSpec,
        mask: frozenset[str],
        proof: str = "",
    ) -> Subscription:
        """Changes the masked fields to `values`; only the creator or an admin may (with the
        secret as proof, when given or required)."""
        return self._store.update(
            principal.tenant,
            subscription_id,
            lambda current: self._change(principal, current, values, mask, proof),
            names_per_creator=self._names_per_creator,
        )

    def preview_update(
        self,
        principal: Principal,
        subscription_id: str,
        values: SubscriptionSpec,
        mask: frozenset[str],
        proof: str = "",
    ) -> UpdatePreview:
        """What `update` would store now, or the error it would raise; nothing is written."""
        current = self._store.get(principal.tenant, subscription_id)
        spec = self._change(principal, current, values, mask, proof).spec
        secrets = self._store.live_secrets(subscription_id)
        return UpdatePreview(spec, url_changed=spec.url != current.spec.url, secrets=secrets)

    def _change(
        self,
        principal: Principal,
        current: Subscription,
        values: SubscriptionSpec,
        mask: frozenset[str],
        proof: str,
    ) -> Change:
        """The change `values` make to `current`, validated and authorized."""
        self._authorize(principal, current, proof)
        updates: dict[str, object] = {
            path: getattr(values, path) for path in mask if path not in PAYLOAD_FIELDS
        }
        if mask & PAYLOAD_FIELDS:
            updates["payload"] = _payload_change(current.spec.payload, values.payload, mask)
        if "url" in mask:
            updates["url"] = to_uri(values.url)
        moved = "url" in mask and not same_host(str(updates["url"]), current.spec.url)
        if "headers" in mask:
            headers, again = merge_redacted(
                values.headers, current.spec.headers, same_host=not moved
            )
        else:
            headers = current.spec.headers
            shown = {name.lower() for name in current.spec.visible_headers}
            again = [k for k in headers if k.lower() not in shown] if moved else []
        if again:
            raise invalid(
                "subscription.headers",
                f"the URL moves to another host: give the values of {', '.join(sorted(again))}"
                " again, or remove them",
                "HEADERS_NEEDED_AGAIN",
            )
        updates["headers"] = headers
        if "visible_headers" not in mask:  # a removed header is no longer visible either
            names = {name.lower() for name in headers}
            updates["visible_headers"] = tuple(
                v for v in current.spec.visible_headers if v.lower() in names
            )
        spec = replace(current.spec, **updates)  # type: ignore[arg-type]
        catalog = self._event_types.catalog()
        touched = tuple(f"subscription.{path}" for path in mask | _payload_paths(mask))
        violations = [v for v in self._violations(spec, catalog) if v.field.startswith(touched)]
        if violations:
            raise InvalidArgument(violations)
        if "event_types" not in mask:
            return Change(spec)
        _check_subscribe_scopes(principal, spec.event_types, catalog)
        return Change(spec, granted_scopes=_granted(principal))

    def delete(self, principal: Principal, subscription_id: str, proof: str = "") -> None:
        self._store.delete(
            principal.tenant,
            subscription_id,
            lambda current: self._authorize(principal, current, proof),
        )

    def rotate_secret(
        self,
        principal: Principal,
        subscription_id: str,
        overlap: timedelta | None,
        proof: str = "",
    ) -> tuple[Subscription, str]:
        """A new current secret; the old ones keep signing for `overlap` (None = the default)."""
        if overlap is None:
            overlap = timedelta(seconds=self._settings.rotation_overlap_seconds)
        if not timedelta(0) <= overlap <= MAX_OVERLAP:
            raise invalid(
                "overlap", "must be between 0 (revoke now) and 7 days", "OVERLAP_OUT_OF_RANGE"
            )
        secret = new_secret()
        subscription = self._store.rotate_secret(
            principal.tenant,
            subscription_id,
            lambda current: self._authorize(principal, current, proof),
            secret,
            overlap,
        )
        return subscription, secret

    def _authorize(self, principal: Principal, current: Subscription, proof: str) -> None:
        """The creator or an admin, holding the current secret when it is given or required."""
        require_owner_or_admin(principal, current.created_by)
        required = self._settings.require_secret_proof
        if proof or (required and not principal.is_admin):
            secrets = self._store.live_secrets(current.id)
            require_secret_proof(principal, proof, secrets[0] if secrets else "", required=required)

    def _violations(
        self, spec: SubscriptionSpec, catalog: Mapping[str, EventType]
    ) -> list[FieldViolation]:
        return [
            *validate_subscription(
                spec,
                catalog=catalog,
                allow_http=self._settings.allow_http,
                allow_cidrs=self._settings.ssrf_allow_cidrs,
            ),
            *payloads.validate(spec.payload),
            *filters.violations(spec.filter),
        ]


def _payload_change(current: Payload, values: Payload, mask: frozenset[str]) -> Payload:
    """The payload after an update of either or both of its fields; leaving TEMPLATE without
    naming the template drops it."""
    kind = values.format if "payload_format" in mask else current.format
    if "payload_template" in mask:
        template = values.template
    else:
        template = current.template if kind == PayloadFormat.TEMPLATE else ""
    return Payload(kind, template)


def _payload_paths(mask: frozenset[str]) -> frozenset[str]:
    """A change to either payload field is checked as a whole."""
    return PAYLOAD_FIELDS if mask & PAYLOAD_FIELDS else frozenset()


def _granted(principal: Principal) -> list[str]:
    """Scopes recorded on the subscription: patterns only deliver types these allow."""
    return ["*"] if principal.is_admin else sorted(principal.scopes)


def _check_subscribe_scopes(
    principal: Principal, items: Sequence[str], catalog: Mapping[str, EventType]
) -> None:
    """Exact names need their subscribe scope now; patterns are filtered at delivery."""
    required = {
        name: catalog[name].required_scope
        for name in items
        if not event_patterns.is_pattern(name) and name in catalog
    }
    missing = missing_subscribe_scopes(principal, required)
    if missing:
        scopes = sorted(set(missing.values()))
        raise PermissionDenied(
            f"subscribing to {', '.join(sorted(missing))} needs the scope(s) {', '.join(scopes)}",
            reason="MISSING_SUBSCRIBE_SCOPE",
            metadata={"event_types": ",".join(sorted(missing)), "scopes": ",".join(scopes)},
        )
