"""Versioned schema migrations, applied in order and recorded in `schema_migration`.

To change the schema: append a migration to MIGRATIONS (never edit an applied one).
Migration 1 creates the tables from today's models, so every later migration first checks
whether its index or column is there already (a new database has it). Once a migration
has to change something in a way that cannot be checked like that, copy today's model
definitions into migration 1 so it stays frozen (tests/test_store_schema.py fails if the
migrated schema and the models disagree).
"""

from collections.abc import Callable

import peewee as pw

from service.domain.clock import utcnow
from service.store import tables


def _initial(db: pw.Database) -> None:
    db.create_tables(tables.ALL_TABLES, safe=False)


# Later migrations check before they add: a database created at version 1 from today's
# models already has their indexes and columns.
def _delivery_age_index(db: pw.Database) -> None:
    sql = "CREATE INDEX IF NOT EXISTS deliveries_created_at ON deliveries (created_at)"
    db.execute_sql(sql)  # type: ignore[no-untyped-call]


def _subscription_page_index(db: pw.Database) -> None:
    sql = "CREATE INDEX IF NOT EXISTS subscriptions_tenant_id ON subscriptions (tenant, id)"
    db.execute_sql(sql)  # type: ignore[no-untyped-call]


def _outbox_claims(db: pw.Database) -> None:
    if "claimed_until" not in {c.name for c in db.get_columns("outbox")}:
        kind = "TIMESTAMP" if isinstance(db, pw.PostgresqlDatabase) else "DATETIME"
        db.execute_sql(f"ALTER TABLE outbox ADD COLUMN claimed_until {kind}")  # type: ignore[no-untyped-call]


def _drop_delivery_subscription_index(db: pw.Database) -> None:
    # Every delivery insert paid for a B-tree that the unique (subscription, event) index
    # already provides, its leading column being the same.
    db.execute_sql("DROP INDEX IF EXISTS deliveries_subscription_id")  # type: ignore[no-untyped-call]


def _tenant_subscription_count(db: pw.Database) -> None:
    if "subscription_count" not in {c.name for c in db.get_columns("tenant")}:
        db.execute_sql(  # type: ignore[no-untyped-call]
            "ALTER TABLE tenant ADD COLUMN subscription_count INTEGER NOT NULL DEFAULT 0"
        )
    tenant, subscriptions = tables.Tenant, tables.SubscriptionRow
    missing = (
        subscriptions.select(subscriptions.tenant, pw.Value(utcnow()))
        .where(subscriptions.tenant.not_in(tenant.select(tenant.id)))
        .distinct()
    )
    tenant.insert_from(missing, [tenant.id, tenant.created_at]).execute()
    count = subscriptions.select(pw.fn.COUNT(subscriptions.id)).where(
        subscriptions.tenant == tenant.id
    )
    tenant.update(subscription_count=count).execute()


def _visible_headers(db: pw.Database) -> None:
    # Existing subscriptions get none: every header value becomes write-only.
    if "visible_headers" not in {c.name for c in db.get_columns("subscriptions")}:
        db.execute_sql(  # type: ignore[no-untyped-call]
            "ALTER TABLE subscriptions ADD COLUMN visible_headers TEXT NOT NULL DEFAULT '[]'"
        )


def _delivery_latency(db: pw.Database) -> None:
    if "last_latency_ms" not in {c.name for c in db.get_columns("deliveries")}:
        db.execute_sql(  # type: ignore[no-untyped-call]
            "ALTER TABLE deliveries ADD COLUMN last_latency_ms INTEGER NOT NULL DEFAULT 0"
        )


def _names_per_creator(db: pw.Database) -> None:
    # Unique per (tenant, creator, name): WEBHOOKS_SUBSCRIPTION_NAMES_UNIQUE_PER=principal
    # lets two creators use one name; the tenant-wide rule is checked under the tenant lock.
    for statement in (
        "DROP INDEX IF EXISTS subscriptions_tenant_name",
        "CREATE UNIQUE INDEX IF NOT EXISTS subscriptions_tenant_created_by_name"
        " ON subscriptions (tenant, created_by, name)",
        "CREATE INDEX IF NOT EXISTS subscriptions_tenant_name ON subscriptions (tenant, name)",
    ):
        db.execute_sql(statement)  # type: ignore[no-untyped-call]


def _payload_formats(db: pw.Database) -> None:
    columns = {c.name for c in db.get_columns("subscriptions")}
    for name, kind in (
        ("payload_format", "SMALLINT NOT NULL DEFAULT 1"),
        ("payload_template", "TEXT NOT NULL DEFAULT ''"),
    ):
        if name not in columns:
            db.execute_sql(f"ALTER TABLE subscriptions ADD COLUMN {name} {kind}")  # type: ignore[no-untyped-call]


def _replays(db: pw.Database) -> None:
    # An event may have one delivery per subscription from ingest (replay "") and one per
    # ReplayEvents call: the unique index takes the replay key in.
    if "replay" not in {c.name for c in db.get_columns("deliveries")}:
        db.execute_sql(  # type: ignore[no-untyped-call]
            "ALTER TABLE deliveries ADD COLUMN replay VARCHAR(40) NOT NULL DEFAULT ''"
        )
    for statement in (
        "CREATE UNIQUE INDEX IF NOT EXISTS deliveries_subscription_id_event_id_replay"
        " ON deliveries (subscription_id, event_id, replay)",
        "DROP INDEX IF EXISTS deliveries_subscription_id_event_id",
    ):
        db.execute_sql(statement)  # type: ignore[no-untyped-call]


def _filters(db: pw.Database) -> None:
    if "filter_expression" not in {c.name for c in db.get_columns("subscriptions")}:
        db.execute_sql(  # type: ignore[no-untyped-call]
            "ALTER TABLE subscriptions ADD COLUMN filter_expression TEXT NOT NULL DEFAULT ''"
        )


def _ordering(db: pw.Database) -> None:
    columns = {c.name for c in db.get_columns("subscriptions")}
    if "ordering" not in columns:
        db.execute_sql(  # type: ignore[no-untyped-call]
            "ALTER TABLE subscriptions ADD COLUMN ordering SMALLINT NOT NULL DEFAULT 1"
        )
    columns = {c.name for c in db.get_columns("deliveries")}
    for name, kind in (
        ("ordering_key", "VARCHAR(255) NOT NULL DEFAULT ''"),
        ("holds_key", "BOOLEAN NOT NULL DEFAULT FALSE"),
    ):
        if name not in columns:
            db.execute_sql(f"ALTER TABLE deliveries ADD COLUMN {name} {kind}")  # type: ignore[no-untyped-call]
    for statement in (
        "CREATE INDEX IF NOT EXISTS deliveries_ordered_pending"
        " ON deliveries (subscription_id, ordering_key, event_id)"
        " WHERE ordering_key <> '' AND status = 1",
        "CREATE INDEX IF NOT EXISTS deliveries_held"
        " ON deliveries (subscription_id, ordering_key, event_id) WHERE holds_key",
    ):
        db.execute_sql(statement)  # type: ignore[no-untyped-call]


def _subscription_changes(db: pw.Database) -> None:
    db.create_tables([tables.SubscriptionChangeRow], safe=True)


MIGRATIONS: tuple[tuple[int, str, Callable[[pw.Database], None]], ...] = (
    (1, "initial", _initial),
    (2, "delivery age index for retention", _delivery_age_index),
    (3, "subscription page index", _subscription_page_index),
    (4, "outbox claims for several publishers", _outbox_claims),
    (5, "no separate delivery subscription index", _drop_delivery_subscription_index),
    (6, "subscription count per tenant", _tenant_subscription_count),
    (7, "header values write-only unless visible", _visible_headers),
    (8, "last attempt latency per delivery", _delivery_latency),
    (9, "subscription names unique per creator in the database", _names_per_creator),
    (10, "payload format per subscription", _payload_formats),
    (11, "deliveries made by replays", _replays),
    (12, "payload filter per subscription", _filters),
    (13, "ordered delivery per key", _ordering),
    (14, "subscription change log for cached targets", _subscription_changes),
)


def applied_versions(db: pw.Database) -> set[int]:
    if not db.table_exists(tables.SchemaMigration._meta.table_name):
        return set()
    return {row.version for row in tables.SchemaMigration.select(tables.SchemaMigration.version)}


def migrate(db: pw.Database) -> list[int]:
    """Applies every pending migration, each in its own transaction; returns the versions applied.

    Safe to run from several instances at once: each migration's version row is
    inserted in the migration's transaction, so a concurrent runner fails instead of
    applying it twice.
    """
    db.create_tables([tables.SchemaMigration], safe=True)
    done = applied_versions(db)
    applied = []
    for version, name, step in MIGRATIONS:
        if version in done:
            continue
        with db.atomic():
            tables.SchemaMigration.create(version=version, name=name, applied_at=utcnow())
            step(db)
        applied.append(version)
    return applied
