"""The JSON body every delivery carries: {"id", "type", "timestamp", "tenant", "data"}."""

from datetime import datetime

import orjson


def webhook_body(
    event_id: str,
    event_type: str,
    timestamp: datetime,
    tenant: str,
    data: bytes,
    *,
    test: bool = False,
) -> bytes:
    """Builds the body around `data`, which is already JSON and is kept byte for byte."""
    head = {
        "id": event_id,
        "type": event_type,
        # Naive UTC, as the store keeps it; isoformat is twice as fast as strftime.
        "timestamp": timestamp.isoformat(timespec="microseconds") + "Z",
        "tenant": tenant,
    }
    if test:
        head["test"] = True  # type: ignore[assignment]
    return orjson.dumps(head)[:-1] + b',"data":' + data + b"}"
