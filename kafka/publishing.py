"""What the service writes to Kafka beside dead letters: events published over gRPC into
the ingest topic, and attempts' audit records."""

from collections.abc import Sequence

from kafka.producer import Producer
from service.domain.event_message import event_message
from service.domain.models import Event
from service.domain.pipeline import RecordedAttempt
from service.errors import invalid

# Both the events published over gRPC and the audit records are protobuf messages.
PROTOBUF_HEADERS = [("content-type", b"application/x-protobuf")]


class EventPublisher:
    """PublishEvent's end: a `webhooks.v1.DomainEvent` on the first ingest topic."""

    def __init__(self, producer: Producer, topic: str, max_event_bytes: int) -> None:
        self._producer = producer
        self._topic = topic
        self._limit = max_event_bytes

    async def publish(self, event: Event) -> tuple[str, int, int]:
        """Returns (topic, partition, offset) once the broker acked; raises Unavailable. The
        record key is the event's ordering key, else its id."""
        value = event_message(event).SerializeToString()
        if len(value) > self._limit:  # ingest would dead-letter it: refuse it now instead
            raise invalid(
                "event.data",
                f"the event is {len(value)} bytes; the limit is {self._limit}",
                "EVENT_TOO_LARGE",
            )
        [(partition, offset)] = await self._producer.send_all(
            [(self._topic, (event.ordering_key or event.id).encode(), value, PROTOBUF_HEADERS)]
        )
        return self._topic, partition, offset


class AuditSender:
    """Audit records straight to their topic, returning once the broker acked every one."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    async def publish(self, items: Sequence[RecordedAttempt]) -> None:
        await self._producer.send_all(
            [(i.audit_topic, i.audit_key, i.audit_value, PROTOBUF_HEADERS) for i in items]
        )
