"""The one table from domain errors to gRPC status codes, with google.rpc error details."""

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import errors

DOMAIN = "webhooks.v1"
# Errors quote the caller's input, which can be large; gRPC clients refuse trailers over
# 8 KB by default (and then see RESOURCE_EXHAUSTED), so every text and list is bounded.
MAX_TEXT = 300
MAX_VIOLATIONS = 20


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


STATUS_CODES: dict[type[errors.WebhookError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_code(error: errors.WebhookError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status(error: errors.WebhookError) -> grpc.Status:
    """A grpc.Status whose trailers carry google.rpc.Status with ErrorInfo and, where they
    apply, BadRequest field violations or a QuotaFailure."""
    code = status_code(error)
    details = [
        error_details_pb2.ErrorInfo(
            reason=error.reason,
            domain=DOMAIN,
            metadata={_clip(k): _clip(v) for k, v in error.metadata.items()},
        )
    ]
    if isinstance(error, errors.InvalidArgument):
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_clip(v.field), description=_clip(v.description), reason=v.reason
                    )
                    for v in error.violations[:MAX_VIOLATIONS]
                ]
            )
        )
    if isinstance(error, errors.QuotaExceeded):
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject="tenant", description=_clip(error.message)
                    )
                ]
            )
        )
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=code.value[0], message=_clip(error.message), details=packed)
    return rpc_status.to_status(status)


INTERNAL = rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"))
