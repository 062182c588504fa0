"""Verification pings, over the deliveries' HTTP client: the same SSRF guard, CAs and
rules (2xx only, no redirects), with a timeout of their own."""

from collections.abc import Mapping, Sequence
from pathlib import Path

from service.domain.outcomes import AttemptResult
from service.domain.signing import webhook_headers
from service.domain.ssrf import IpNetwork
from service.engine.http import HttpSender


class EndpointPinger:
    def __init__(
        self,
        *,
        allow_http: bool,
        allow_cidrs: Sequence[IpNetwork],
        ca_file: Path | None,
        timeout_seconds: float,
    ) -> None:
        self._sender = HttpSender(
            allow_http=allow_http,
            allow_cidrs=allow_cidrs,
            timeout_seconds=timeout_seconds,
            ca_file=ca_file,
        )

    async def ping(
        self,
        url: str,
        custom_headers: Mapping[str, str],
        keys: Sequence[bytes],
        message_id: str,
        timestamp: int,
        body: bytes,
        content_type: str,
    ) -> AttemptResult:
        headers = webhook_headers(custom_headers, keys, message_id, timestamp, body, content_type)
        return await self._sender.send(url, headers, body)

    async def stop(self, grace: float) -> None:
        await self._sender.close()
