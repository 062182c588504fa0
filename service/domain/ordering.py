"""Ordered delivery: what an event's ordering key is, and which subscriptions keep order."""

import hashlib
import re

from service.domain.models import Ordering

MAX_KEY = 255
# What a database text column holds as given and a person can read back.
_PLAIN = re.compile(r"[^\x00-\x1f\x7f]{1,255}")


def ordering_key(raw: bytes | str | None) -> str:
    """The key as stored: the text itself when it is UTF-8 of 1 to 255 characters without
    control characters, else `sha256:` and the hex digest of its bytes (one key for the same
    bytes, whatever they hold); "" for none (not ordered)."""
    if raw is None or raw in (b"", ""):
        return ""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "sha256:" + hashlib.sha256(raw).hexdigest()
    else:
        text = raw
    if _PLAIN.fullmatch(text):
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def is_ordered(ordering: Ordering) -> bool:
    return ordering in (Ordering.PER_KEY, Ordering.PER_KEY_HOLD)
