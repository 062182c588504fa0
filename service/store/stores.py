"""The store's parts over one database, built together."""

from dataclasses import dataclass

import peewee as pw

from service.crypto import SecretBox
from service.store.attempts import AttemptStore
from service.store.delivery_queries import DeliveryQueries
from service.store.event_types import EventTypeStore
from service.store.ingest import IngestStore
from service.store.outbox import OutboxStore
from service.store.subscriptions import SubscriptionStore


@dataclass(frozen=True)
class Stores:
    """Every method of every part is synchronous and runs on a store thread."""

    database: pw.Database
    ingest: IngestStore
    attempts: AttemptStore
    outbox: OutboxStore
    deliveries: DeliveryQueries
    subscriptions: SubscriptionStore
    event_types: EventTypeStore

    @classmethod
    def over(cls, db: pw.Database, box: SecretBox) -> "Stores":
        return cls(
            database=db,
            ingest=IngestStore(db),
            attempts=AttemptStore(db, box),
            outbox=OutboxStore(db),
            deliveries=DeliveryQueries(db),
            subscriptions=SubscriptionStore(db, box),
            event_types=EventTypeStore(db),
        )
