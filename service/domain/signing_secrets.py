"""Signing secrets: `whsec_` + base64 of 32 random bytes, and the prefix shown later."""

import base64
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
# How much of the secret's random part is shown after creation (like `whsec_a1b2c3`).
VISIBLE_CHARS = 6
# Secrets signing at once, the current one included: each adds a signature to every
# delivery's header (1,000 rotations once made it 47 KiB). Svix keeps at most 10 too.
MAX_LIVE_SECRETS = 10


def new_secret() -> str:
    """Returns a fresh Standard Webhooks signing secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_prefix(secret: str) -> str:
    """The part of a secret that may be shown again: `whsec_` and six characters."""
    return secret[: len(SECRET_PREFIX) + VISIBLE_CHARS]
