"""Subscriptions and their signing secrets: queries and transactions."""

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

import peewee as pw

from service.crypto import SecretBox
from service.domain import payloads
from service.domain.clock import utcnow
from service.domain.ids import new_id
from service.domain.models import DisabledReason, Ordering, Subscription, SubscriptionSpec
from service.domain.outcomes import DeliveryStatus
from service.domain.signing_secrets import MAX_LIVE_SECRETS, secret_prefix
from service.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    QuotaExceeded,
)
from service.store import bulk, changes, idempotency, ordered
from service.store.tables import (
    DeliveryRow,
    IdempotencyRow,
    SigningSecretRow,
    SubscriptionRow,
    Tenant,
)

# How long a request_id is remembered for CreateSubscription retries.
_CREATE = "CreateSubscription"


@dataclass(frozen=True)
class Change:
    """What an update writes: the new fields and, when event types changed, the scopes granted."""

    spec: SubscriptionSpec
    granted_scopes: Sequence[str] | None = None


# Reads on the API's hot paths are plain SQL read as tuples: peewee's query building and
# row models for this wide table cost more than the database took to answer.
_SUBSCRIPTION_COLUMNS = (
    "id, tenant, name, url, description, event_types, enabled, headers_encrypted,"
    " rate_limit_per_second, disabled_reason, created_by, created_at, updated_at,"
    " last_delivery_at, last_delivery_status, visible_headers, payload_format, payload_template,"
    " filter_expression, ordering"
)
# What the API shows of the secrets, in the same statement as the row: the newest live
# secret's prefix and when the older live ones expire. Each `?` is the current time. One
# statement: a second query for the secrets cost more than the page's own.
_SHOWN_KEY_COLUMNS = (
    " (SELECT k.prefix FROM signing_secrets k WHERE k.subscription_id = subscriptions.id"
    "  AND (k.expires_at IS NULL OR k.expires_at > ?) ORDER BY k.id DESC LIMIT 1),"
    " (SELECT MAX(p.expires_at) FROM signing_secrets p WHERE p.subscription_id = subscriptions.id"
    "  AND p.expires_at > ? AND p.id < (SELECT MAX(k.id) FROM signing_secrets k"
    "   WHERE k.subscription_id = subscriptions.id AND (k.expires_at IS NULL OR k.expires_at > ?)))"
)
_SHOWN_COLUMNS = f"{_SUBSCRIPTION_COLUMNS},{_SHOWN_KEY_COLUMNS}"


def _reorder(db: pw.Database, subscription_id: str, ordering: Ordering) -> None:
    """Its deliveries follow a new ordering choice: without ordering none waits for another;
    without holding no FAILED one holds its key."""
    now = utcnow()
    mine = DeliveryRow.subscription == subscription_id
    if ordering == Ordering.NONE:
        DeliveryRow.update(next_attempt_at=now).where(
            mine & (DeliveryRow.status == int(DeliveryStatus.PENDING)) & ordered.turn_taken()
        ).execute()
        DeliveryRow.update(ordering_key="", holds_key=False).where(
            mine & (DeliveryRow.ordering_key != "")
        ).execute()
        return
    held = [
        row.id for row in DeliveryRow.select(DeliveryRow.id).where(mine & DeliveryRow.holds_key)
    ]
    if held:
        DeliveryRow.update(holds_key=False).where(DeliveryRow.id.in_(held)).execute()
        ordered.next_turn(db, held, now)


class _SubscriptionRead(NamedTuple):
    """One row of _SHOWN_COLUMNS, as the driver returns it."""

    id: str
    tenant: str
    name: str
    url: str
    description: str
    event_types: str
    enabled: bool
    headers_encrypted: bytes | None
    rate_limit_per_second: int
    disabled_reason: int
    created_by: str
    created_at: datetime | str
    updated_at: datetime | str
    last_delivery_at: datetime | str | None
    last_delivery_status: int
    visible_headers: str
    payload_format: int
    payload_template: str
    filter_expression: str
    ordering: int
    secret_prefix: str | None
    previous_secret_expires_at: datetime | str | None


_SIGNING_KEY_COLUMNS = "id, subscription_id, prefix, expires_at, secret_encrypted"
# Live secrets, newest first (each subscription's rows come in one statement, so in order).
_LIVE_SECRETS = (
    f"SELECT {_SIGNING_KEY_COLUMNS} FROM signing_secrets"  # noqa: S608 (constants only)
    " WHERE (expires_at IS NULL OR expires_at > ?) AND subscription_id IN ({}) ORDER BY id DESC"
)


class _SecretRead(NamedTuple):
    id: int
    subscription_id: str
    prefix: str
    expires_at: datetime | str | None
    secret_encrypted: bytes


def live_secrets(db: pw.Database, ids: Sequence[str]) -> dict[str, list[_SecretRead]]:
    """The live (unexpired) signing secrets of each subscription, newest first, still
    encrypted: the API shows their prefixes, the dispatcher signs with them."""
    out: dict[str, list[_SecretRead]] = {}
    for row in bulk.rows_in(db, _LIVE_SECRETS, ids, utcnow()):
        out.setdefault(row[1], []).append(_SecretRead(*row))
    return out


@functools.lru_cache(maxsize=1024)
def _event_types(text: str) -> tuple[str, ...]:
    """A stored JSON list column (event_types, visible_headers) as a tuple; few distinct
    lists recur on every page."""
    return tuple(json.loads(text))


_DISABLED_REASONS = {int(reason): reason for reason in DisabledReason}


_moment = bulk.read_moment


class SubscriptionStore:
    """Every method is synchronous and runs on a store thread."""

    def __init__(self, db: pw.Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    def create(
        self,
        *,
        tenant: str,
        created_by: str,
        spec: SubscriptionSpec,
        granted_scopes: Sequence[str],
        secret: str,
        quota: int,
        request_id: str = "",
        request_hash: str = "",
        names_per_creator: bool = False,
    ) -> tuple[Subscription, str]:
        """Creates it with its first secret, or replays the first result of a request_id.
        Names are unique in the tenant, or among the creator's own (`names_per_creator`)."""
        for attempt in range(2):
            try:
                with self._db.atomic():
                    # The tenant lock comes first: a concurrent retry of the same
                    # request_id waits here, then finds the first one's record.
                    self._lock_tenant(tenant)
                    if request_id:
                        replay = self._replay(tenant, request_id, request_hash)
                        if replay is not None:
                            return replay
                    if quota and self._count(tenant) >= quota:
                        raise QuotaExceeded(
                            f"tenant has reached its quota of {quota} subscriptions",
                            metadata={"quota": str(quota)},
                        )
                    owner = created_by if names_per_creator else None
                    if self._name_taken(tenant, spec.name, owner):
                        raise AlreadyExists(
                            f"a subscription named {spec.name!r} already exists",
                            reason="NAME_TAKEN",
                            metadata={"field": "subscription.name"},
                        )
                    now = utcnow()
                    row = SubscriptionRow.create(
                        id=new_id("sub"),
                        tenant=tenant,
                        created_by=created_by,
                        created_at=now,
                        updated_at=now,
                        granted_scopes=json.dumps(sorted(granted_scopes)),
                        **self._spec_columns(spec),
                    )
                    self._add_secret(row.id, secret, now)
                    self._counted(tenant, +1)
                    changes.record(self._db, [(row.id, tenant)])
                    if request_id:
                        IdempotencyRow.create(
                            tenant=tenant,
                            method=_CREATE,
                            request_id=request_id,
                            request_hash=request_hash,
                            resource_id=row.id,
                            result_encrypted=self._box.encrypt(secret),
                            created_at=now,
                        )
                    return self._load(tenant, row.id), secret
            except pw.IntegrityError:
                # A concurrent create won the race for the name or the request_id;
                # the second pass sees its row and answers accordingly.
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def get(self, tenant: str, subscription_id: str) -> Subscription:
        return self._load(tenant, subscription_id)

    def list_page(
        self, tenant: str, after: str | None, limit: int, skip: int = 0
    ) -> tuple[list[Subscription], bool, int]:
        """A page after the id `after` and `skip` more, oldest first; also whether more
        follow and the total."""
        db = self._db
        total = self._count(tenant)
        query = (
            f"SELECT {_SHOWN_COLUMNS} FROM subscriptions"  # noqa: S608 (a constant)
            " WHERE tenant = ? AND id > ? ORDER BY id LIMIT ? OFFSET ?"
        )
        now = utcnow()
        cursor = db.execute_sql(  # type: ignore[no-untyped-call]
            bulk.sql(db, query), (now, now, now, tenant, after or "", limit + 1, skip)
        )
        rows = cursor.fetchall()
        page = [self._to_domain(_SubscriptionRead(*row)) for row in rows[:limit]]
        return page, len(rows) > limit, total

    def update(
        self,
        tenant: str,
        subscription_id: str,
        change: Callable[[Subscription], Change],
        *,
        names_per_creator: bool = False,
    ) -> Subscription:
        """Applies `change` (which sees the current state and may refuse) in one transaction."""
        with self._db.atomic():
            current = self._load(tenant, subscription_id, lock=True)
            result = change(current)
            spec = result.spec
            owner = current.created_by if names_per_creator else None
            if spec.name != current.spec.name and self._renamed_onto_another(
                tenant, spec.name, owner
            ):
                raise AlreadyExists(
                    f"a subscription named {spec.name!r} already exists",
                    reason="NAME_TAKEN",
                    metadata={"field": "subscription.name"},
                )
            columns = self._spec_columns(spec)
            if spec.enabled and not current.spec.enabled:
                columns["failing_since"] = None
            elif spec.enabled == current.spec.enabled:
                columns["disabled_reason"] = int(current.disabled_reason)
            if result.granted_scopes is not None:
                columns["granted_scopes"] = json.dumps(sorted(result.granted_scopes))
            SubscriptionRow.update(updated_at=utcnow(), **columns).where(
                SubscriptionRow.id == subscription_id
            ).execute()
            if spec.ordering != current.spec.ordering:
                _reorder(self._db, subscription_id, spec.ordering)
            changes.record(self._db, [(subscription_id, tenant)])
            return self._load(tenant, subscription_id)

    def delete(
        self, tenant: str, subscription_id: str, check: Callable[[Subscription], None]
    ) -> None:
        """Deletes the subscription; its secrets and deliveries go with it (ON DELETE CASCADE)."""
        with self._db.atomic():
            check(self._load(tenant, subscription_id, lock=True))
            SubscriptionRow.delete().where(SubscriptionRow.id == subscription_id).execute()
            self._counted(tenant, -1)
            changes.record(self._db, [(subscription_id, tenant)])

    def rotate_secret(
        self,
        tenant: str,
        subscription_id: str,
        check: Callable[[Subscription], None],
        secret: str,
        overlap: timedelta,
    ) -> Subscription:
        """Adds `secret` as current; every older live secret expires within `overlap`. With
        an overlap, refused while MAX_LIVE_SECRETS sign already."""
        with self._db.atomic():
            check(self._load(tenant, subscription_id, lock=True))
            now = utcnow()
            signing = len(live_secrets(self._db, [subscription_id]).get(subscription_id, []))
            if overlap and signing >= MAX_LIVE_SECRETS:
                raise FailedPrecondition(
                    f"{signing} secrets sign its deliveries already, the most allowed; rotate"
                    " with overlap 0 to revoke the older ones now, or wait until one expires",
                    reason="TOO_MANY_LIVE_SECRETS",
                    metadata={"live_secrets": str(signing), "max": str(MAX_LIVE_SECRETS)},
                )
            deadline = now + overlap
            live = SigningSecretRow.subscription == subscription_id
            SigningSecretRow.update(expires_at=deadline).where(
                live
                & (SigningSecretRow.expires_at.is_null() | (SigningSecretRow.expires_at > deadline))
            ).execute()
            self._add_secret(subscription_id, secret, now)
            SubscriptionRow.update(updated_at=now).where(
                SubscriptionRow.id == subscription_id
            ).execute()
            changes.record(self._db, [(subscription_id, tenant)])
            return self._load(tenant, subscription_id)

    def live_secrets(self, subscription_id: str) -> list[str]:
        """The secrets that sign deliveries now, newest first."""
        rows = live_secrets(self._db, [subscription_id]).get(subscription_id, [])
        return [self._box.decrypt(bytes(r.secret_encrypted)) for r in rows]

    # -- helpers -------------------------------------------------------------

    def _replay(
        self, tenant: str, request_id: str, request_hash: str
    ) -> tuple[Subscription, str] | None:
        row = idempotency.remembered(tenant, _CREATE, request_id, request_hash)
        if row is None:
            return None
        return self._load(tenant, row.resource_id), self._box.decrypt(row.result_encrypted)

    def _count(self, tenant: str) -> int:
        """The tenant's subscriptions, as create and delete keep them on its row."""
        db = self._db
        cursor = db.execute_sql(  # type: ignore[no-untyped-call]
            bulk.sql(db, "SELECT subscription_count FROM tenant WHERE id = ?"), (tenant,)
        )
        found = cursor.fetchone()
        return int(found[0]) if found is not None else 0

    def _counted(self, tenant: str, change: int) -> None:
        Tenant.update(subscription_count=Tenant.subscription_count + change).where(
            Tenant.id == tenant
        ).execute()

    def _lock_tenant(self, tenant: str) -> None:
        Tenant.insert(id=tenant, created_at=utcnow()).on_conflict_ignore().execute()
        if self._db.for_update:  # PostgreSQL; SQLite's IMMEDIATE transaction already serializes
            Tenant.select().where(Tenant.id == tenant).for_update().get()

    def _name_taken(self, tenant: str, name: str, created_by: str | None) -> bool:
        """Whether the name is in use in the tenant, or by `created_by` when given. Callers
        hold the tenant's lock: only (tenant, creator, name) is unique in the database."""
        query = SubscriptionRow.select().where(
            (SubscriptionRow.tenant == tenant) & (SubscriptionRow.name == name)
        )
        if created_by is not None:
            query = query.where(SubscriptionRow.created_by == created_by)
        return bool(query.exists())

    def _renamed_onto_another(self, tenant: str, name: str, created_by: str | None) -> bool:
        self._lock_tenant(tenant)
        return self._name_taken(tenant, name, created_by)

    def _spec_columns(self, spec: SubscriptionSpec) -> dict[str, object]:
        return {
            "name": spec.name,
            "description": spec.description,
            "url": spec.url,
            "event_types": json.dumps(list(spec.event_types)),
            "enabled": spec.enabled,
            "disabled_reason": int(DisabledReason.NONE if spec.enabled else DisabledReason.MANUAL),
            "headers_encrypted": self._box.encrypt(json.dumps(spec.headers))
            if spec.headers
            else None,
            "rate_limit_per_second": spec.rate_limit_per_second,
            "visible_headers": json.dumps(list(spec.visible_headers)),
            "payload_format": int(spec.payload.format),
            "payload_template": spec.payload.template,
            "filter_expression": spec.filter,
            "ordering": int(spec.ordering),
        }

    def _add_secret(self, subscription_id: str, secret: str, now: datetime) -> None:
        SigningSecretRow.create(
            subscription=subscription_id,
            secret_encrypted=self._box.encrypt(secret),
            prefix=secret_prefix(secret),
            created_at=now,
        )

    def _load(self, tenant: str, subscription_id: str, *, lock: bool = False) -> Subscription:
        query = f"SELECT {_SHOWN_COLUMNS} FROM subscriptions WHERE id = ? AND tenant = ?"  # noqa: S608 (a constant)
        if lock and self._db.for_update:
            query += " FOR UPDATE OF subscriptions"
        now = utcnow()
        cursor = self._db.execute_sql(  # type: ignore[no-untyped-call]
            bulk.sql(self._db, query), (now, now, now, subscription_id, tenant)
        )
        found = cursor.fetchone()
        row = _SubscriptionRead(*found) if found is not None else None
        if row is None:
            # Another tenant's id looks exactly like a missing one.
            raise NotFound(
                f"subscription {subscription_id!r} not found", reason="SUBSCRIPTION_NOT_FOUND"
            )
        return self._to_domain(row)

    def _to_domain(self, row: _SubscriptionRead) -> Subscription:
        headers = (
            json.loads(self._box.decrypt(bytes(row.headers_encrypted)))
            if row.headers_encrypted
            else {}
        )
        delivered = row.last_delivery_at
        previous = row.previous_secret_expires_at
        return Subscription(
            id=row.id,
            tenant=row.tenant,
            spec=SubscriptionSpec(
                name=row.name,
                url=row.url,
                description=row.description,
                event_types=_event_types(row.event_types),
                enabled=bool(row.enabled),
                headers=headers,
                rate_limit_per_second=row.rate_limit_per_second,
                visible_headers=_event_types(row.visible_headers),
                payload=payloads.stored(row.payload_format, row.payload_template),
                filter=row.filter_expression,
                ordering=Ordering(row.ordering),
            ),
            disabled_reason=_DISABLED_REASONS[row.disabled_reason],
            secret_prefix=row.secret_prefix or "",
            created_by=row.created_by,
            create_time=_moment(row.created_at),
            update_time=_moment(row.updated_at),
            last_delivery_time=_moment(delivered) if delivered is not None else None,
            last_delivery_status=row.last_delivery_status,
            previous_secret_expire_time=_moment(previous) if previous is not None else None,
        )
