"""The first call made with a request_id, remembered for IDEMPOTENCY_WINDOW so that a retry
gets the same answer and does nothing twice."""

from datetime import timedelta

from service.domain.clock import utcnow
from service.errors import invalid
from service.store.tables import IdempotencyRow

IDEMPOTENCY_WINDOW = timedelta(hours=24)


def remembered(
    tenant: str, method: str, request_id: str, request_hash: str
) -> IdempotencyRow | None:
    """The record of an earlier `method` call with the request_id (None: none, or expired
    and removed); REQUEST_ID_REUSED when that call asked something else."""
    row = IdempotencyRow.get_or_none(
        (IdempotencyRow.tenant == tenant)
        & (IdempotencyRow.method == method)
        & (IdempotencyRow.request_id == request_id)
    )
    if row is None:
        return None
    if row.created_at < utcnow() - IDEMPOTENCY_WINDOW:
        row.delete_instance()
        return None
    if row.request_hash != request_hash:
        raise invalid("request_id", "was already used for a different request", "REQUEST_ID_REUSED")
    return row
