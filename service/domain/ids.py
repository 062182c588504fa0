"""Time-sortable resource ids (`sub_01J...`): 48-bit milliseconds + 80 random bits."""

import hashlib
import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, sorts like the numbers
# Every pair of characters, indexed by 10 bits: two ids per delivery are made on the hot
# path, and 13 lookups cost half of 26 shifts and appends.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = range(120, -1, -10)  # 13 pairs of 5-bit digits, most significant first


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """Returns `prefix_` + 26 base32 characters that sort by creation time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return _encode(prefix, (ms << 80) | int.from_bytes(os.urandom(10), "big"))


def derived_id(prefix: str, now_ms: int, key: bytes) -> str:
    """Like `new_id`, with the 80 bits from `key` instead of random: the same arguments give
    the same id."""
    digest = hashlib.blake2b(key, digest_size=10).digest()
    return _encode(prefix, (now_ms << 80) | int.from_bytes(digest, "big"))


def _encode(prefix: str, value: int) -> str:
    return f"{prefix}_{''.join(_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS)}"
