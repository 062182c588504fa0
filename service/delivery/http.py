"""The HTTP client (aiohttp): sends one signed POST with the SSRF guard, maps failures to kinds."""

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from service.domain.clock import utcnow
from service.domain.outcomes import AttemptResult, ErrorKind
from service.domain.retry import parse_retry_after
from service.domain.ssrf import IpNetwork, address_allowed

RESPONSE_BODY_LIMIT = 4096
USER_AGENT = "webhook-service/0.1 (+Standard Webhooks)"


class SsrfBlocked(OSError):
    """The host resolved only to addresses the guard refuses."""


class GuardedResolver(AbstractResolver):
    """Resolves, then keeps only allowed addresses. aiohttp connects to exactly what this
    returns, so a DNS answer that changes between check and connect cannot slip through."""

    def __init__(self, allow: Sequence[IpNetwork]) -> None:
        self._allow = tuple(allow)
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        allowed = [
            a for a in answers if address_allowed(ipaddress.ip_address(a["host"]), self._allow)
        ]
        if not allowed:
            raise SsrfBlocked(f"{host} resolves only to non-public addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class HttpSender:
    """One shared connection pool; `send` never raises, it returns an AttemptResult."""

    def __init__(
        self,
        *,
        allow_http: bool,
        allow_cidrs: Sequence[IpNetwork],
        timeout_seconds: float,
        ca_file: Path | None = None,
    ) -> None:
        self._allow_http = allow_http
        self._allow_cidrs = allow_cidrs
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if ca_file:
            self._ssl.load_default_certs()
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._allow_cidrs),
                limit=0,  # the dispatcher bounds concurrency, per endpoint and in all
                ttl_dns_cache=10,
                ssl=self._ssl,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"User-Agent": USER_AGENT},
                skip_auto_headers=("Accept-Encoding",),
                auto_decompress=False,
            )
        return self._session

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> AttemptResult:
        if url.startswith("http://") and not self._allow_http:
            return AttemptResult(
                error_kind=ErrorKind.SSRF_BLOCKED, error_message="plain http is not allowed"
            )
        start = time.perf_counter()
        try:
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                raw = await response.content.read(RESPONSE_BODY_LIMIT)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except Exception as exc:  # every failure becomes an attempt result
            kind, message = classify(exc)
            return AttemptResult(error_kind=kind, error_message=message, latency_ms=_ms(start))
        kind = ErrorKind.NONE
        message = ""
        if 300 <= status < 400:
            kind, message = ErrorKind.REDIRECT, f"redirect ({status}) not followed"
        elif not 200 <= status < 300:
            kind, message = ErrorKind.HTTP_STATUS, f"HTTP {status}"
        return AttemptResult(
            http_status=status,
            error_kind=kind,
            error_message=message,
            latency_ms=_ms(start),
            response_body=raw.decode("utf-8", "replace"),
            retry_after=_retry_after_seconds(retry_after),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def classify(exc: BaseException) -> tuple[ErrorKind, str]:
    """Maps a client failure to an error kind and a short message without secrets."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        if isinstance(exc.os_error, SsrfBlocked):
            return ErrorKind.SSRF_BLOCKED, str(exc.os_error)
        return ErrorKind.DNS, "host name did not resolve"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return ErrorKind.TLS, f"TLS failed: {type(exc).__name__}"
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return ErrorKind.TIMEOUT, "no answer within the attempt timeout"
    if isinstance(exc, aiohttp.InvalidURL):
        return ErrorKind.CONNECTION, "invalid URL"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ErrorKind.CONNECTION, f"connection failed: {type(exc).__name__}"
    return ErrorKind.CONNECTION, f"request failed: {type(exc).__name__}"


def _retry_after_seconds(value: str | None) -> float | None:
    return parse_retry_after(value, utcnow())


def _ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)
