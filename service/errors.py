"""The service's errors, in one tree; the gRPC edge maps each class to a status code in one
table (service/api/status.py).

* WebhookError: what callers are told, with a stable `reason`
  * InvalidArgument: bad fields, each named (`violations`)
  * Unauthenticated, PermissionDenied
  * NotFound, AlreadyExists, FailedPrecondition, QuotaExceeded
  * Unavailable: the database or the broker cannot be reached; retry later
* StartupError: the service cannot start; the message says what to fix
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. `subscription.url`), what is wrong, and
    the rule it breaks as a stable UPPER_SNAKE reason (README "Error reasons")."""

    field: str
    description: str
    reason: str


class WebhookError(Exception):
    """Base of every error the service reports to its callers.

    `reason` is a stable UPPER_SNAKE identifier for machines; the message is for people
    and must never contain a secret or an API key.
    """

    default_reason = "ERROR"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = metadata or {}


class InvalidArgument(WebhookError):
    """The request is malformed; `violations` names each bad field."""

    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None) -> None:
        """The error's reason is the first violation's, unless given."""
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        first = violations[0].reason if violations else None
        super().__init__(summary or "invalid argument", reason=reason or first)
        self.violations = violations


class Unauthenticated(WebhookError):
    """No API key, or one that is unknown or revoked."""

    default_reason = "UNAUTHENTICATED"


class PermissionDenied(WebhookError):
    """The key is valid but may not do this (scope, or not the creator)."""

    default_reason = "PERMISSION_DENIED"


class NotFound(WebhookError):
    """No such resource in the caller's tenant (another tenant's resources included)."""

    default_reason = "NOT_FOUND"


class AlreadyExists(WebhookError):
    """A resource with the same unique key exists."""

    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(WebhookError):
    """The request is valid but the current state does not allow it."""

    default_reason = "FAILED_PRECONDITION"


class QuotaExceeded(WebhookError):
    """A per-tenant quota would be exceeded."""

    default_reason = "QUOTA_EXCEEDED"


class Unavailable(WebhookError):
    """A dependency (database, broker) cannot be reached; the caller may retry."""

    default_reason = "UNAVAILABLE"


class StartupError(Exception):
    """The service cannot start; the message says what to fix, in one line."""


def invalid(field: str, description: str, reason: str) -> InvalidArgument:
    """Shorthand for an InvalidArgument with a single violation."""
    return InvalidArgument([FieldViolation(field, description, reason)])
