"""peewee table models (timestamps are naive UTC); bound to a database at start."""

import peewee as pw

# Bound by service.store.database.open_database; nothing connects at import time.
database_proxy = pw.DatabaseProxy()


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class SchemaMigration(BaseModel):
    """One applied migration."""

    version = pw.IntegerField(primary_key=True)
    name = pw.CharField(max_length=200)
    applied_at = pw.DateTimeField()


class Tenant(BaseModel):
    """A tenant row, locked while creating a subscription so the quota holds under races."""

    id = pw.CharField(max_length=128, primary_key=True)
    created_at = pw.DateTimeField()
    # Kept by create and delete in their transactions: List's total and the quota read it
    # instead of counting the tenant's subscriptions, whose cost grew with their number.
    subscription_count = pw.IntegerField(default=0)


class SubscriptionRow(BaseModel):
    id = pw.CharField(max_length=40, primary_key=True)
    tenant = pw.CharField(max_length=128)
    name = pw.CharField(max_length=255)
    description = pw.TextField(default="")
    url = pw.TextField()
    # JSON list of exact names and patterns; empty = all.
    event_types = pw.TextField(default="[]")
    # JSON list of the scopes held by whoever last set event_types ("*" = admin): an
    # event type that needs a subscribe scope is only delivered if it is here.
    granted_scopes = pw.TextField(default="[]")
    enabled = pw.BooleanField(default=True)
    disabled_reason = pw.SmallIntegerField(default=0)
    # Encrypted JSON object of custom headers (their values may be credentials).
    headers_encrypted = pw.BlobField(null=True)
    # JSON list of the header names whose values reads show (the rest are write-only).
    # A database default too, as migration 7 gave rows made before it.
    visible_headers = pw.TextField(default="[]", constraints=[pw.SQL("DEFAULT '[]'")])
    rate_limit_per_second = pw.IntegerField(default=0)
    # PayloadFormat and, for TEMPLATE, the template. Database defaults as migration 10 gave.
    payload_format = pw.SmallIntegerField(default=1, constraints=[pw.SQL("DEFAULT 1")])
    payload_template = pw.TextField(default="", constraints=[pw.SQL("DEFAULT ''")])
    # CEL text (service.domain.filters); "" = every event. Database default as migration 12.
    filter_expression = pw.TextField(default="", constraints=[pw.SQL("DEFAULT ''")])
    # webhooks.v1.Ordering (1: none). Database default as migration 13 gave.
    ordering = pw.SmallIntegerField(default=1, constraints=[pw.SQL("DEFAULT 1")])
    created_by = pw.CharField(max_length=255)
    created_at = pw.DateTimeField()
    updated_at = pw.DateTimeField()
    last_delivery_at = pw.DateTimeField(null=True)
    last_delivery_status = pw.IntegerField(default=0)
    # Start of the current run of failures; the subscription is disabled when too old.
    failing_since = pw.DateTimeField(null=True)

    class Meta:
        table_name = "subscriptions"
        indexes = (
            # Names are unique per tenant or per creator (a setting), checked under the
            # tenant's lock; the database holds the narrower rule.
            (("tenant", "created_by", "name"), True),
            (("tenant", "name"), False),
            (("tenant", "id"), False),  # List pages in id order without sorting the tenant
        )


class SigningSecretRow(BaseModel):
    """Secrets of a subscription; the newest is current, older ones live until expires_at."""

    id = pw.AutoField()
    subscription = pw.ForeignKeyField(SubscriptionRow, on_delete="CASCADE", backref="secrets")
    subscription_id: str  # peewee's accessor for the key column, declared for type checkers
    secret_encrypted = pw.BlobField()
    prefix = pw.CharField(max_length=20)
    created_at = pw.DateTimeField()
    expires_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "signing_secrets"


class EventTypeRow(BaseModel):
    name = pw.CharField(max_length=128, primary_key=True)
    description = pw.TextField(default="")
    required_scope = pw.CharField(max_length=128, default="")
    json_schema = pw.TextField(default="")
    example_json = pw.TextField(default="")
    created_at = pw.DateTimeField()
    updated_at = pw.DateTimeField()

    class Meta:
        table_name = "event_types"


class EventRow(BaseModel):
    """An ingested event; (tenant, event_id) is unique so re-consumption adds nothing."""

    id = pw.BigAutoField()
    tenant = pw.CharField(max_length=128)
    event_id = pw.CharField(max_length=255)
    type = pw.CharField(max_length=128)
    source = pw.CharField(max_length=255, default="")
    subject = pw.CharField(max_length=255, default="")
    occurred_at = pw.DateTimeField()
    received_at = pw.DateTimeField(index=True)
    data = pw.BlobField()

    class Meta:
        table_name = "events"
        indexes = ((("tenant", "event_id"), True),)


class DeliveryRow(BaseModel):
    """One event to one subscription; unique per (subscription, event)."""

    id = pw.CharField(max_length=40, primary_key=True)
    tenant = pw.CharField(max_length=128)
    # No index of its own: the unique (subscription, event) index leads with it.
    subscription = pw.ForeignKeyField(
        SubscriptionRow, on_delete="CASCADE", backref="deliveries", index=False
    )
    event = pw.ForeignKeyField(EventRow, on_delete="CASCADE", backref="deliveries")
    subscription_id: str
    event_id: int
    event_type = pw.CharField(max_length=128)
    status = pw.SmallIntegerField()
    attempt_count = pw.IntegerField(default=0)
    last_http_status = pw.IntegerField(default=0)
    # Of the last attempt. A database default too, as migration 8 gave older databases.
    last_latency_ms = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])
    test = pw.BooleanField(default=False)
    # Set by RetryDelivery/RecoverDeliveries: the next attempt is recorded as MANUAL.
    manual = pw.BooleanField(default=False)
    # Made by ReplayEvents: the replay's key (else ""), so an event can have one delivery
    # per subscription from ingest and one per replay. A database default too (migration 11).
    replay = pw.CharField(max_length=40, default="", constraints=[pw.SQL("DEFAULT ''")])
    # The event's ordering key when the subscription keeps order (else ""): the scheduler
    # sends a delivery only once no earlier one of its key is pending or holds it.
    ordering_key = pw.CharField(max_length=255, default="", constraints=[pw.SQL("DEFAULT ''")])
    # FAILED under ORDERING_PER_KEY_HOLD: the later deliveries of its key wait.
    holds_key = pw.BooleanField(default=False, constraints=[pw.SQL("DEFAULT FALSE")])
    created_at = pw.DateTimeField(index=True)  # retention prunes by age
    last_attempt_at = pw.DateTimeField(null=True)
    next_attempt_at = pw.DateTimeField(null=True, index=True)

    class Meta:
        table_name = "deliveries"
        indexes = (
            (("subscription", "event", "replay"), True),
            (("tenant", "created_at"), False),
        )


# The deliveries that keep later ones of their key waiting (service.store.ordered): the
# pending ordered ones and the held ones, each found without reading a key's history.
DeliveryRow.add_index(
    DeliveryRow.index(
        DeliveryRow.subscription,
        DeliveryRow.ordering_key,
        DeliveryRow.event,
        name="deliveries_ordered_pending",
    ).where((DeliveryRow.ordering_key != pw.SQL("''")) & (DeliveryRow.status == pw.SQL("1")))
)
DeliveryRow.add_index(
    DeliveryRow.index(
        DeliveryRow.subscription,
        DeliveryRow.ordering_key,
        DeliveryRow.event,
        name="deliveries_held",
    ).where(DeliveryRow.holds_key)
)


class AttemptRow(BaseModel):
    id = pw.CharField(max_length=40, primary_key=True)
    delivery = pw.ForeignKeyField(DeliveryRow, on_delete="CASCADE", backref="attempts")
    attempt_number = pw.IntegerField()
    trigger = pw.SmallIntegerField()
    started_at = pw.DateTimeField()
    latency_ms = pw.IntegerField(default=0)
    url = pw.TextField()
    http_status = pw.IntegerField(default=0)
    response_body = pw.TextField(default="")
    error_kind = pw.SmallIntegerField(default=0)
    error_message = pw.TextField(default="")
    outcome = pw.SmallIntegerField()
    next_attempt_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "attempts"


class OutboxRow(BaseModel):
    """A record waiting to be published to Kafka; deleted once the broker acknowledged it."""

    id = pw.BigAutoField()
    topic = pw.CharField(max_length=255)
    key = pw.BlobField(null=True)
    value = pw.BlobField()
    created_at = pw.DateTimeField()
    # Several instances (PostgreSQL): the publisher that claimed the row, until then.
    claimed_until = pw.DateTimeField(null=True)

    class Meta:
        table_name = "outbox"


class IdempotencyRow(BaseModel):
    """The first result of a Create called with a request_id, replayed on retries."""

    tenant = pw.CharField(max_length=128)
    method = pw.CharField(max_length=64)
    request_id = pw.CharField(max_length=128)
    request_hash = pw.CharField(max_length=64)
    resource_id = pw.CharField(max_length=40)
    # Encrypted, because the first result of CreateSubscription carries the secret.
    result_encrypted = pw.BlobField()
    created_at = pw.DateTimeField(index=True)

    class Meta:
        table_name = "idempotency_keys"
        primary_key = pw.CompositeKey("tenant", "method", "request_id")


class SubscriptionChangeRow(BaseModel):
    """A subscription created, changed or deleted: every instance reads the new rows about
    once a second and forgets what it cached of those subscriptions (service.store.changes)."""

    id = pw.BigAutoField()
    subscription_id = pw.CharField(max_length=40)
    tenant = pw.CharField(max_length=128)
    changed_at = pw.DateTimeField(index=True)  # retention drops rows no instance still needs

    class Meta:
        table_name = "subscription_changes"


# In dependency order (referenced tables first).
ALL_TABLES: tuple[type[BaseModel], ...] = (
    Tenant,
    SubscriptionRow,
    SigningSecretRow,
    EventTypeRow,
    EventRow,
    DeliveryRow,
    AttemptRow,
    OutboxRow,
    IdempotencyRow,
    SubscriptionChangeRow,
)
