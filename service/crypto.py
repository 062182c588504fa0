"""Encryption at rest for signing secrets and other sensitive values (Fernet, rotatable keys)."""

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretBox:
    """Encrypts with the first key, decrypts with any, so keys can be rotated."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode("utf-8")
        except InvalidToken:
            # Translated here so no cryptography type leaks upward; never echo the token.
            raise ValueError(
                "stored value cannot be decrypted with the configured encryption keys"
            ) from None


def new_encryption_key() -> str:
    """A fresh key for WEBHOOKS_SECRET_ENCRYPTION_KEYS."""
    return Fernet.generate_key().decode("ascii")
