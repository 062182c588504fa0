"""Page sizes and opaque page tokens bound to the query they continue."""

import base64
import hashlib
import json

from service.errors import invalid

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_SKIP = 100_000


def page_size(requested: int) -> int:
    """0 means the default; otherwise 1 to 100."""
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= requested <= MAX_PAGE_SIZE:
        raise invalid(
            "page_size",
            f"must be between 1 and {MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE})",
            "INVALID_PAGE_SIZE",
        )
    return requested


def skip(requested: int) -> int:
    """Results passed over before the page (AIP-158); each costs the database a row read."""
    if not 0 <= requested <= MAX_SKIP:
        raise invalid("skip", f"must be between 0 and {MAX_SKIP}", "INVALID_SKIP")
    return requested


def query_fingerprint(*parts: object) -> str:
    """A short digest of the filters, so a token cannot continue a different query."""
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def encode_token(after: str, fingerprint: str) -> str:
    """A token that resumes after the key `after` (the last item of this page)."""
    raw = json.dumps({"a": after, "q": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, fingerprint: str) -> str | None:
    """The key to resume after; None for the first page. Rejects foreign or altered tokens."""
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after, query = raw["a"], raw["q"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise invalid(
            "page_token", "is not a token this service issued", "INVALID_PAGE_TOKEN"
        ) from None
    if query != fingerprint or not isinstance(after, str):
        raise invalid(
            "page_token",
            "belongs to a different query; keep the other fields the same",
            "PAGE_TOKEN_MISMATCH",
        ) from None
    return after
