"""An Event as the webhooks.v1.DomainEvent message: what PublishEvent writes to the ingest
topic and what a subscription's filter sees as `event`."""

from datetime import UTC

from google.protobuf import timestamp_pb2

from service.domain.clock import epoch_parts
from service.domain.models import Event
from webhooks.v1 import events_pb2


def event_message(event: Event) -> events_pb2.DomainEvent:
    """The message; a naive time is UTC (epoch_parts: Timestamp.FromDatetime costs ~4 us)."""
    moment = event.time
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    seconds, nanos = epoch_parts(moment)
    return events_pb2.DomainEvent(
        id=event.id,
        type=event.type,
        source=event.source,
        subject=event.subject,
        tenant=event.tenant,
        time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        data=event.data,
    )
