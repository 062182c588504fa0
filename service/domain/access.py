"""API keys, principals and scopes: who may do what (pure rules, no file or network I/O)."""

import base64
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from service.errors import FieldViolation, InvalidArgument, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)
READ = "webhooks:read"
WRITE = "webhooks:write"
ADMIN = "webhooks:admin"
# Changes the event type catalog, which every tenant shares: an operator's scope, granted
# only explicitly in the keys file and never implied by webhooks:admin, so no tenant's
# admin can change what another tenant's events must look like.
CATALOG = "webhooks:catalog"
_OPERATOR_SCOPES = frozenset({CATALOG})
# Holding a scope implies the ones listed here.
_IMPLIED = {ADMIN: (WRITE, READ), WRITE: (READ,)}
KEY_PREFIX = "whk_"
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Principal:
    """The caller behind an API key."""

    key_id: str
    tenant: str
    name: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes

    def has(self, scope: str) -> bool:
        """Admins hold every scope, subscribe scopes included, but the operator's."""
        if scope in self.scopes:
            return True
        return self.is_admin and scope not in _OPERATOR_SCOPES


@dataclass(frozen=True)
class KeyEntry:
    """One line of the keys file: the key's SHA-256, never the key itself."""

    principal: Principal
    sha256: str
    revoked: bool = False


def new_api_key() -> str:
    """A fresh API key: `whk_` + 32 random bytes, url-safe base64."""
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def hash_key(key: str) -> str:
    """The hex SHA-256 stored in the keys file. Keys are 256-bit random, so no slow hash."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def expand_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes plus those they imply."""
    out = set(scopes)
    for scope in list(out):
        out.update(_IMPLIED.get(scope, ()))
    return frozenset(out)


def parse_keys(document: object) -> dict[str, KeyEntry]:
    """Builds the key ring from the parsed keys file; raises ValueError naming the bad entry."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('the keys file must be a JSON object with a "keys" list')
    ring: dict[str, KeyEntry] = {}
    for index, raw in enumerate(document["keys"]):
        where = f"keys[{index}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be an object")
        digest = str(raw.get("sha256", "")).lower()
        tenant = str(raw.get("tenant", ""))
        scopes = raw.get("scopes", [])
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(
                f"{where}.sha256 must be 64 hex digits (see `webhook-service new-api-key`)"
            )
        if not _TENANT.fullmatch(tenant):
            raise ValueError(f"{where}.tenant must be 1 to 128 letters, digits, '_', '.', '-'")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError(f"{where}.scopes must be a list of strings")
        if digest in ring:
            raise ValueError(f"{where} repeats a key")
        principal = Principal(
            key_id=str(raw.get("id") or digest[:12]),
            tenant=tenant,
            name=str(raw.get("principal") or raw.get("id") or digest[:12]),
            scopes=expand_scopes(scopes),
        )
        ring[digest] = KeyEntry(principal, digest, bool(raw.get("revoked", False)))
    return ring


def authenticate(ring: Mapping[str, KeyEntry], authorization: str | None) -> Principal:
    """The principal of an `authorization: Bearer <key>` value, or Unauthenticated."""
    if not authorization:
        raise Unauthenticated(
            "missing `authorization: Bearer <api key>` metadata", reason="MISSING_API_KEY"
        )
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated(
            "authorization must be `Bearer <api key>`", reason="MALFORMED_API_KEY"
        )
    digest = hash_key(key.strip())
    entry = ring.get(digest)
    # The lookup is by digest, so timing reveals nothing of the key; compare anyway.
    if entry is None or not hmac.compare_digest(entry.sha256, digest):
        raise Unauthenticated("invalid API key", reason="INVALID_API_KEY")
    if entry.revoked:
        # The same answer as an unknown key: a caller learns nothing of which keys once
        # were valid. The operator sees which revoked key is still in use.
        log.warning("revoked API key used", extra={"key_id": entry.principal.key_id})
        raise Unauthenticated("invalid API key", reason="INVALID_API_KEY")
    return entry.principal


def require_scope(principal: Principal, scope: str) -> None:
    """Raises PermissionDenied unless the principal holds the scope."""
    if not principal.has(scope):
        raise PermissionDenied(
            f"this API key lacks the scope {scope}",
            reason="MISSING_SCOPE",
            metadata={"scope": scope},
        )


def require_owner_or_admin(principal: Principal, created_by: str) -> None:
    """Only the creator of a subscription or an admin may change or delete it."""
    if principal.name != created_by and not principal.is_admin:
        raise PermissionDenied(
            "only the subscription's creator or an admin may change it", reason="NOT_CREATOR"
        )


def require_secret_proof(
    principal: Principal, proof: str, current_secret: str, *, required: bool
) -> None:
    """A proof given must be the current signing secret (compared in constant time); the
    operator may require one from every key but an admin's."""
    if not proof:
        if required and not principal.is_admin:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "secret_proof",
                        "is required: the subscription's signing secret",
                        "SECRET_PROOF_REQUIRED",
                    )
                ]
            )
        return
    if not hmac.compare_digest(proof.encode(), current_secret.encode()):
        raise InvalidArgument(
            [
                FieldViolation(
                    "secret_proof",
                    "is not the subscription's current signing secret",
                    "INVALID_SECRET",
                )
            ]
        )


def missing_subscribe_scopes(principal: Principal, required: Mapping[str, str]) -> dict[str, str]:
    """Event types (name -> scope) whose subscribe scope the principal lacks."""
    return {name: scope for name, scope in required.items() if scope and not principal.has(scope)}
