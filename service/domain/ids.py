"""Time-sortable resource ids (`sub_01J...`): 48-bit milliseconds + 80 random bits."""

import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, sorts like the numbers


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """Returns `prefix_` + 26 base32 characters that sort by creation time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
