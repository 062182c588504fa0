"""Secrets at rest and API key checks: signing secrets and sensitive headers are not readable
in the database (SQLite file or PostgreSQL tables); keys are compared as digests, in
constant time."""

import base64
import hmac
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.domain.access import authenticate, hash_key, parse_keys
from tests.support import KEYS, Api, write_keys_file
from webhooks.v1 import webhook_service_pb2 as pb


def _stored_bytes(api: Api, tmp_path: Path) -> bytes:
    """Everything the database holds, as bytes: the SQLite files, or every PostgreSQL row."""
    url = api.settings.database_url
    if url.startswith("sqlite"):
        files = [Path(url.removeprefix("sqlite:///") + suffix) for suffix in ("", "-wal")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    with psycopg.connect(url.split("?")[0], options=_search_path(url)) as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        dump = []
        for (table,) in cur.fetchall():
            cur.execute(f"SELECT * FROM {table}")
            for row in cur.fetchall():
                dump.append(repr(row).encode())
                dump.extend(bytes(v) for v in row if isinstance(v, bytes | memoryview))
        return b"\n".join(dump)


def _search_path(url: str) -> str:
    return "-csearch_path=" + url.split("search_path%3D", 1)[1]


def test_signing_secrets_and_header_values_are_not_readable_in_the_database(
    api: Api, tmp_path: Path
) -> None:
    token = "Bearer do-not-store-me-in-clear"
    created = api.create(headers={"Authorization": token})
    rotated = api.call(
        "RotateSubscriptionSecret",
        pb.RotateSubscriptionSecretRequest(id=created.subscription.id),
    ).secret
    stored = _stored_bytes(api, tmp_path)
    assert created.subscription.id.encode() in stored  # the dump does hold the rows
    for secret in (created.secret, rotated):
        key = base64.b64decode(secret.removeprefix("whsec_"))
        text = secret.removeprefix("whsec_")
        for form in (secret.encode(), text.encode(), key, key.hex().encode()):
            assert form not in stored
    assert token.encode() not in stored and b"do-not-store-me" not in stored
    for api_key in KEYS.values():
        assert api_key.encode() not in stored


def test_api_keys_are_held_as_digests_and_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = parse_keys(json.loads(write_keys_file(tmp_path / "keys.json").read_text()))
    assert set(ring) == {hash_key(key) for key in KEYS.values()}
    assert not {key for key in KEYS.values()} & set(ring)  # no key in clear in memory
    compared: list[tuple[Any, Any]] = []
    compare = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module access.py uses
    assert authenticate(ring, f"Bearer {KEYS['alice']}").name == "alice"
    assert compared == [(hash_key(KEYS["alice"]), hash_key(KEYS["alice"]))]
