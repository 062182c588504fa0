"""The migrated schema equals the models', migrations are idempotent, deletes cascade."""

from datetime import timedelta

import peewee as pw

from service.domain.clock import utcnow
from service.store import bulk, tables
from service.store.database import open_database
from service.store.migrations import MIGRATIONS, applied_versions, migrate


def _open(database_url: str) -> pw.Database:
    db = open_database(database_url)
    db.connect()
    return db


def test_migrations_create_exactly_the_models_schema_and_run_once(database_url: str) -> None:
    db = _open(database_url)
    try:
        assert migrate(db) == [version for version, _, _ in MIGRATIONS]
        assert migrate(db) == []
        assert applied_versions(db) == {version for version, _, _ in MIGRATIONS}
        models: list[type[pw.Model]] = [tables.SchemaMigration, *tables.ALL_TABLES]
        for model in models:
            table = model._meta.table_name
            columns = {c.name for c in db.get_columns(table)}
            assert columns == {f.column_name for f in model._meta.sorted_fields}, table
    finally:
        db.close()


def test_deleting_a_subscription_cascades_to_secrets_deliveries_and_attempts(
    database_url: str,
) -> None:
    db = _open(database_url)
    try:
        migrate(db)
        now = utcnow()
        sub = tables.SubscriptionRow.create(
            id="sub_1",
            tenant="t",
            name="n",
            url="https://e.com/",
            created_by="p",
            created_at=now,
            updated_at=now,
        )
        tables.SigningSecretRow.create(
            subscription=sub, secret_encrypted=b"x", prefix="whsec_", created_at=now
        )
        event = tables.EventRow.create(
            tenant="t", event_id="e1", type="a.b", occurred_at=now, received_at=now, data=b"{}"
        )
        delivery = tables.DeliveryRow.create(
            id="msg_1",
            tenant="t",
            subscription=sub,
            event=event,
            event_type="a.b",
            status=1,
            created_at=now,
        )
        tables.AttemptRow.create(
            id="att_1",
            delivery=delivery,
            attempt_number=1,
            trigger=1,
            started_at=now,
            url="u",
            outcome=2,
            next_attempt_at=now + timedelta(seconds=5),
        )
        sub.delete_instance()
        for model in (tables.SigningSecretRow, tables.DeliveryRow, tables.AttemptRow):
            assert model.select().count() == 0, model
        assert tables.EventRow.select().count() == 1  # events are shared; retention prunes them
    finally:
        db.close()


def test_index_migrations_add_their_index_to_a_version_1_database(database_url: str) -> None:
    db = _open(database_url)
    added = {
        2: ("deliveries", "deliveries_created_at"),
        3: ("subscriptions", "subscriptions_tenant_id"),
    }
    try:
        migrate(db)
        for table, index in added.values():
            assert index in {i.name for i in db.get_indexes(table)}
            # Back to what version 1 of the schema was: without the index.
            db.execute_sql(f"DROP INDEX {index}")  # type: ignore[no-untyped-call]
        # And without the columns of migrations 7 and 8, which older rows lack.
        db.execute_sql("ALTER TABLE subscriptions DROP COLUMN visible_headers")  # type: ignore[no-untyped-call]
        db.execute_sql("ALTER TABLE deliveries DROP COLUMN last_latency_ms")  # type: ignore[no-untyped-call]
        for column in ("payload_format", "payload_template"):
            db.execute_sql(f"ALTER TABLE subscriptions DROP COLUMN {column}")  # type: ignore[no-untyped-call]
        # And names unique per tenant in the database, as before migration 9.
        for statement in (
            "DROP INDEX subscriptions_tenant_created_by_name",
            "DROP INDEX subscriptions_tenant_name",
            "CREATE UNIQUE INDEX subscriptions_tenant_name ON subscriptions (tenant, name)",
            # And one delivery per (subscription, event), as before migration 11.
            "DROP INDEX deliveries_subscription_id_event_id_replay",
            "ALTER TABLE deliveries DROP COLUMN replay",
            "CREATE UNIQUE INDEX deliveries_subscription_id_event_id"
            " ON deliveries (subscription_id, event_id)",
        ):
            db.execute_sql(statement)  # type: ignore[no-untyped-call]
        tables.SchemaMigration.delete().where(tables.SchemaMigration.version > 1).execute()
        # Migrations 4 and 6 find their columns there already, 5 no index to drop.
        assert migrate(db) == [*sorted(added), 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
        for table, index in added.values():
            assert index in {i.name for i in db.get_indexes(table)}
        assert "visible_headers" in {c.name for c in db.get_columns("subscriptions")}
        assert "last_latency_ms" in {c.name for c in db.get_columns("deliveries")}
        assert {"payload_format", "payload_template"} <= {
            c.name for c in db.get_columns("subscriptions")
        }
        unique = {i.name: i.unique for i in db.get_indexes("subscriptions")}
        assert unique["subscriptions_tenant_created_by_name"] is True
        assert unique["subscriptions_tenant_name"] is False
        deliveries = {i.name: i.unique for i in db.get_indexes("deliveries")}
        assert deliveries["deliveries_subscription_id_event_id_replay"] is True
        assert "deliveries_subscription_id_event_id" not in deliveries
        assert "replay" in {c.name for c in db.get_columns("deliveries")}
    finally:
        db.close()


def test_outbox_claim_column_is_added_to_an_older_database(database_url: str) -> None:
    db = _open(database_url)
    try:
        migrate(db)
        # Back to version 3: the outbox as it was, without its claim column.
        db.drop_tables([tables.OutboxRow])
        db.execute_sql(  # type: ignore[no-untyped-call]
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY, topic VARCHAR(255) NOT NULL,"
            " key BLOB, value BLOB NOT NULL, created_at DATETIME NOT NULL)"
            if isinstance(db, pw.SqliteDatabase)
            else "CREATE TABLE outbox (id BIGSERIAL PRIMARY KEY, topic VARCHAR(255) NOT NULL,"
            " key BYTEA, value BYTEA NOT NULL, created_at TIMESTAMP NOT NULL)"
        )
        tables.SchemaMigration.delete().where(tables.SchemaMigration.version > 3).execute()
        assert migrate(db) == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
        assert "claimed_until" in {c.name for c in db.get_columns("outbox")}
    finally:
        db.close()


def test_the_redundant_delivery_subscription_index_is_dropped_from_an_older_database(
    database_url: str,
) -> None:
    db = _open(database_url)
    try:
        migrate(db)
        # Back to version 4: the foreign key's own index, as version 1 created it.
        db.execute_sql(  # type: ignore[no-untyped-call]
            "CREATE INDEX deliveries_subscription_id ON deliveries (subscription_id)"
        )
        tables.SchemaMigration.delete().where(tables.SchemaMigration.version > 4).execute()
        assert migrate(db) == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
        names = {i.name for i in db.get_indexes("deliveries")}
        assert "deliveries_subscription_id" not in names
        # What subscription lookups use (since migration 11 it ends with the replay key).
        assert "deliveries_subscription_id_event_id_replay" in names
    finally:
        db.close()


def test_the_subscription_count_is_added_and_filled_in_an_older_database(
    database_url: str,
) -> None:
    db = _open(database_url)
    try:
        migrate(db)
        # Back to version 5: the tenant table without its count; "t2" has subscriptions but
        # no tenant row (none of today's paths leave it so, but the count must not miss them).
        db.drop_tables([tables.Tenant])
        kind = "DATETIME" if isinstance(db, pw.SqliteDatabase) else "TIMESTAMP"
        db.execute_sql(  # type: ignore[no-untyped-call]
            f"CREATE TABLE tenant (id VARCHAR(128) PRIMARY KEY, created_at {kind} NOT NULL)"
        )
        now = utcnow()
        insert = bulk.sql(db, "INSERT INTO tenant (id, created_at) VALUES ('t1', ?)")
        db.execute_sql(insert, (now,))  # type: ignore[no-untyped-call]
        for n, tenant in enumerate(["t1", "t1", "t2"]):
            tables.SubscriptionRow.create(
                id=f"sub_{n}",
                tenant=tenant,
                name=f"n{n}",
                url="https://e.com/",
                created_by="p",
                created_at=now,
                updated_at=now,
            )
        tables.SchemaMigration.delete().where(tables.SchemaMigration.version > 5).execute()
        assert migrate(db) == [6, 7, 8, 9, 10, 11, 12, 13, 14]
        counts = {t.id: t.subscription_count for t in tables.Tenant.select()}
        assert counts == {"t1": 2, "t2": 1}
    finally:
        db.close()
