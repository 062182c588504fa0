"""How webhookctl shows answers: aligned tables for people, JSON for scripts, one-line errors."""

import json
from collections.abc import Sequence
from datetime import UTC

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def as_json(message: Message) -> str:
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, indent=2, sort_keys=True
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; an empty list says so instead of a bare header."""
    if not rows:
        return "(none)"
    cells = [[str(c) for c in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """One `name: value` line per field, for a single resource."""
    width = max(len(name) for name, _ in pairs)
    return "\n".join(f"{name.ljust(width)}  {_cell(value)}" for name, value in pairs)


def when(stamp: Timestamp) -> str:
    """A timestamp as ISO 8601 UTC to the second; unset shows as '-'."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return "-"
    return stamp.ToDatetime(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def enum_name(full: str, prefix: str) -> str:
    """`DELIVERY_STATUS_SUCCEEDED` -> `succeeded`."""
    return full.removeprefix(prefix).lower() if not full.endswith("UNSPECIFIED") else "-"


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def error_line(error: grpc.RpcError) -> str:
    """`CODE: message (field: problem; ...)` from a gRPC error and its rich status details."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    line = f"{code.name}: {details}"
    violations = [v for v in _field_violations(error) if v not in details]
    if violations:
        line += " (" + "; ".join(violations) + ")"
    return line


def _field_violations(error: grpc.RpcError) -> list[str]:
    if not isinstance(error, grpc.Call):
        return []
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return []
    out: list[str] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [f"{v.field}: {v.description}" for v in bad.field_violations]
    return out


def dump(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
