"""OAUTHBEARER tokens for Kafka: from a file another process keeps fresh, or from an OAuth 2
token endpoint with the client credentials grant (RFC 6749 section 4.4), as Confluent Cloud,
Redpanda Cloud and self-run clusters with an OIDC provider expect."""

import base64
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiokafka.abc import AbstractTokenProvider

# A token is fetched again once this share of its lifetime has passed.
REFRESH_AT = 0.8
TOKEN_TIMEOUT_SECONDS = 10.0


class TokenUnavailable(Exception):
    """No token could be had; the message names the source, never a secret."""


class TokenFile(AbstractTokenProvider):  # type: ignore[misc]
    """The token in a file, read at every connection: a sidecar or the platform (Kubernetes
    projected tokens, for example) replaces it before it expires."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def token(self) -> str:
        try:
            token = self._path.read_text().strip()
        except OSError as exc:
            raise TokenUnavailable(
                f"cannot read the token file {self._path}: {exc.strerror}"
            ) from None
        if not token:
            raise TokenUnavailable(f"the token file {self._path} is empty")
        return token


class ClientCredentials(AbstractTokenProvider):  # type: ignore[misc]
    """Asks the token endpoint for a token with the client's id and secret (HTTP Basic, each
    form-encoded first, as RFC 6749 2.3.1 says) and reuses it until REFRESH_AT of its life."""

    def __init__(
        self, url: str, client_id: str, client_secret: Callable[[], str], scope: str = ""
    ) -> None:
        self._url = url
        self._client_id = client_id
        self._secret = client_secret
        self._scope = scope
        self._token = ""
        self._refresh_at = 0.0

    async def token(self) -> str:
        if self._token and time.monotonic() < self._refresh_at:
            return self._token
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        pair = f"{quote(self._client_id, safe='')}:{quote(self._secret(), safe='')}"
        headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        timeout = aiohttp.ClientTimeout(total=TOKEN_TIMEOUT_SECONDS)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(self._url, data=form, headers=headers) as response,
            ):
                if response.status != 200:
                    raise TokenUnavailable(
                        f"the token endpoint {self._url} answered HTTP {response.status}"
                    )
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TokenUnavailable(
                f"the token endpoint {self._url} failed: {type(exc).__name__}"
            ) from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenUnavailable(f"the token endpoint {self._url} sent no access_token")
        lifetime = body.get("expires_in", 3600)
        lifetime = lifetime if isinstance(lifetime, int | float) and lifetime > 0 else 3600
        self._token = token
        self._refresh_at = time.monotonic() + REFRESH_AT * lifetime
        return token
