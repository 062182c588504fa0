"""The JSON body every delivery carries: {"id", "type", "timestamp", "tenant", "data"}."""

import json
from datetime import datetime


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
        "timestamp": timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "tenant": tenant,
    }
    if test:
        head["test"] = True  # type: ignore[assignment]
    prefix = json.dumps(head, separators=(",", ":"), ensure_ascii=False)[:-1]
    return prefix.encode("utf-8") + b',"data":' + data + b"}"
