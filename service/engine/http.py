"""The HTTP client: libcurl's multi interface (pycurl) driven by the asyncio loop. Sends one
signed POST with the SSRF guard at connect time and maps failures to error kinds.

Why libcurl: measured here (README "Choice of HTTP client"), a 1 KB POST costs ~70 us of CPU
through pycurl against ~120-200 us through aiohttp, and the delivery engine is CPU-bound."""

import asyncio
import contextlib
import ipaddress
import selectors
import socket
import ssl
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pycurl

from service.domain.clock import utcnow
from service.domain.outcomes import AttemptResult, ErrorKind
from service.domain.retry import parse_retry_after
from service.domain.ssrf import IpNetwork, address_allowed

RESPONSE_BODY_LIMIT = 4096
# Answers up to this long are read to the end, so their connection is kept for the next
# request; a longer one is cut off there and its connection closed, so an endless or huge
# body costs no more than this.
RESPONSE_READ_LIMIT = 64 * 1024
USER_AGENT = "webhook-service/0.1 (+Standard Webhooks)"
CONNECT_TIMEOUT_SECONDS = 10.0
# How many easy handles are kept for reuse (each holds a little libcurl state).
HANDLE_POOL = 256

_TIMEOUT = {pycurl.E_OPERATION_TIMEDOUT}
_DNS = {pycurl.E_COULDNT_RESOLVE_HOST}
_TLS = {
    pycurl.E_SSL_CONNECT_ERROR,
    pycurl.E_PEER_FAILED_VERIFICATION,
    pycurl.E_SSL_CACERT,
    pycurl.E_SSL_CERTPROBLEM,
    pycurl.E_SSL_CIPHER,
    pycurl.E_SSL_CACERT_BADFILE,
    pycurl.E_SSL_ISSUER_ERROR,
}


class _Transfer:
    """One request in flight: its future and what the callbacks collected."""

    __slots__ = ("blocked", "body", "cut", "future", "opened", "retry_after", "size", "start")

    def __init__(self, future: "asyncio.Future[AttemptResult]") -> None:
        self.future = future
        self.body: list[bytes] = []
        self.size = 0
        self.retry_after: str | None = None
        self.blocked = False  # an address was refused...
        self.opened = False  # ...and none was allowed: the whole attempt is SSRF_BLOCKED
        self.cut = False  # the answer was longer than RESPONSE_READ_LIMIT and not read on
        self.start = time.perf_counter()

    def write(self, data: bytes) -> int | None:
        if self.size < RESPONSE_BODY_LIMIT:
            self.body.append(data[: RESPONSE_BODY_LIMIT - self.size])
        self.size += len(data)
        if self.size > RESPONSE_READ_LIMIT:
            self.cut = True
            return 0  # libcurl stops the transfer (E_WRITE_ERROR) and closes the connection
        return None

    def header(self, line: bytes) -> None:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"retry-after":
            self.retry_after = value.strip().decode("latin-1")


class HttpSender:
    """One libcurl multi handle (one connection pool); `send` never raises, it returns an
    AttemptResult."""

    def __init__(
        self,
        *,
        allow_http: bool,
        allow_cidrs: Sequence[IpNetwork],
        timeout_seconds: float,
        ca_file: Path | None = None,
        keep_connections: int = 0,
    ) -> None:
        """`keep_connections`: idle connections kept for reuse (0: libcurl's default)."""
        self._allow_http = allow_http
        self._allow_cidrs = tuple(allow_cidrs)
        self._timeout_ms = int(timeout_seconds * 1000)
        self._connect_timeout_ms = int(min(timeout_seconds, CONNECT_TIMEOUT_SECONDS) * 1000)
        self._protocols = pycurl.PROTO_HTTPS | (pycurl.PROTO_HTTP if allow_http else 0)
        self._ca_bundle = _ca_bundle(ca_file)
        self._keep_connections = keep_connections
        self._multi: pycurl.CurlMulti | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_now = False  # the pending timer is one libcurl asked for at 0 ms
        self._transfers: dict[pycurl.Curl, _Transfer] = {}
        self._idle: list[pycurl.Curl] = []
        self._watching: dict[int, int] = {}  # fd -> the POLL_* libcurl asked for
        # libcurl's sockets wait in this selector, and the loop watches only the selector:
        # a loop reader per request would make and close a uvloop poll handle each time.
        self._selector: selectors.DefaultSelector | None = None

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> AttemptResult:
        return await self.start(url, headers, body)

    def start(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> "asyncio.Future[AttemptResult]":
        """Starts the request; the future resolves with its result (never an exception).
        A plain call, not a coroutine: the delivery worker makes thousands a second, and a
        task for each cost more than the request's own Python work."""
        multi = self._start()
        assert self._loop is not None
        future: asyncio.Future[AttemptResult] = self._loop.create_future()
        if url.startswith("http://") and not self._allow_http:
            future.set_result(
                AttemptResult(
                    error_kind=ErrorKind.SSRF_BLOCKED, error_message="plain http is not allowed"
                )
            )
            return future
        transfer = _Transfer(future)
        handle = self._idle.pop() if self._idle else self._new_handle()
        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.POSTFIELDS, body)
        handle.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in headers.items()] + ["Expect:"])
        handle.setopt(pycurl.WRITEFUNCTION, transfer.write)
        handle.setopt(pycurl.HEADERFUNCTION, transfer.header)
        handle.setopt(pycurl.OPENSOCKETFUNCTION, self._guard(transfer))
        self._transfers[handle] = transfer
        multi.add_handle(handle)
        return future

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for handle, transfer in list(self._transfers.items()):
            self._finish(handle, pycurl.E_ABORTED_BY_CALLBACK, "sender closed")
            transfer.future.cancel()
        for handle in self._idle:
            handle.close()
        self._idle.clear()
        if self._selector is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._selector.fileno())
            self._selector.close()
            self._selector = None
        self._watching.clear()
        if self._multi is not None:
            self._multi.close()
            self._multi = None

    # -- libcurl on the event loop ---------------------------------------------------

    def _start(self) -> pycurl.CurlMulti:
        if self._multi is None:
            self._loop = asyncio.get_running_loop()
            self._multi = pycurl.CurlMulti()
            self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
            self._selector = selectors.DefaultSelector()
            self._loop.add_reader(self._selector.fileno(), self._on_ready)
            self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
            if self._keep_connections:
                # libcurl's default, 4 x the transfers in flight, shrinks after a peak and
                # closes connections the next one opens again.
                self._multi.setopt(pycurl.M_MAXCONNECTS, self._keep_connections)
        return self._multi

    def _new_handle(self) -> pycurl.Curl:
        handle = pycurl.Curl()
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.POST, 1)
        handle.setopt(pycurl.FOLLOWLOCATION, 0)
        handle.setopt(pycurl.PROTOCOLS, self._protocols)
        handle.setopt(pycurl.USERAGENT, USER_AGENT)
        handle.setopt(pycurl.TIMEOUT_MS, self._timeout_ms)
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, self._connect_timeout_ms)
        handle.setopt(pycurl.CAINFO, self._ca_bundle)
        handle.setopt(pycurl.DNS_CACHE_TIMEOUT, 10)
        return handle

    def _guard(self, transfer: _Transfer) -> Any:
        """Checks the address libcurl is about to connect to, after its own DNS lookup: a
        DNS answer cannot change between the check and the connect."""
        allow = self._allow_cidrs

        def open_socket(purpose: int, address: Any) -> Any:
            host = address.addr[0]
            if not address_allowed(ipaddress.ip_address(host.split("%")[0]), allow):
                transfer.blocked = True
                return pycurl.SOCKET_BAD
            transfer.opened = True
            return socket.socket(address.family, address.socktype, address.protocol)

        return open_socket

    def _on_socket(self, event: int, fd: int, multi: Any, data: Any) -> None:
        # libcurl calls this often with what it already asked for; only changes reach the
        # selector, because each is a system call.
        selector = self._selector
        assert selector is not None
        current = self._watching.get(fd, 0)
        if event == current:
            return
        if event == pycurl.POLL_REMOVE:
            if self._watching.pop(fd, None) is not None:
                selector.unregister(fd)
            return
        mask = _SELECTOR_EVENTS[event]
        if current:
            selector.modify(fd, mask)
        else:
            try:
                selector.register(fd, mask)
            except KeyError:  # closed without a REMOVE first: its number was reused
                with contextlib.suppress(KeyError, OSError):
                    selector.unregister(fd)
                selector.register(fd, mask)
        self._watching[fd] = event

    def _on_ready(self) -> None:
        if self._selector is None:
            return
        for key, ready in self._selector.select(0):
            if ready:
                self._act(key.fd, _CURL_EVENTS[ready])

    def _on_timer(self, milliseconds: int) -> None:
        if milliseconds == 0 and self._timer is not None and self._timer_now:
            return  # libcurl asks for "now" at every new request: one call serves them all
        self._timer_now = milliseconds == 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if milliseconds >= 0 and self._loop is not None:
            self._timer = self._loop.call_later(milliseconds / 1000, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        self._act(pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, events: int) -> None:
        multi = self._multi
        if multi is None:
            return
        while multi.socket_action(fd, events)[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        while True:
            queued, done, failed = multi.info_read()
            for handle in done:
                self._finish(handle, 0, "")
            for handle, code, message in failed:
                self._finish(handle, code, message)
            if not queued:
                return

    def _finish(self, handle: pycurl.Curl, code: int, message: str) -> None:
        transfer = self._transfers.pop(handle)
        assert self._multi is not None
        self._multi.remove_handle(handle)
        if code == pycurl.E_WRITE_ERROR and transfer.cut:
            code = 0  # answered: the rest of its body is not wanted
        status = int(handle.getinfo(pycurl.RESPONSE_CODE)) if code == 0 else 0
        handle.setopt(pycurl.OPENSOCKETFUNCTION, _refuse)  # drop the closure over `transfer`
        if len(self._idle) < HANDLE_POOL:
            self._idle.append(handle)
        else:
            handle.close()
        if not transfer.future.done():
            transfer.future.set_result(_result(transfer, status, code, message))


# libcurl's wishes as selector masks, and what the selector saw as libcurl's events.
_SELECTOR_EVENTS = {
    pycurl.POLL_IN: selectors.EVENT_READ,
    pycurl.POLL_OUT: selectors.EVENT_WRITE,
    pycurl.POLL_INOUT: selectors.EVENT_READ | selectors.EVENT_WRITE,
}
_CURL_EVENTS = {
    selectors.EVENT_READ: pycurl.CSELECT_IN,
    selectors.EVENT_WRITE: pycurl.CSELECT_OUT,
    selectors.EVENT_READ | selectors.EVENT_WRITE: pycurl.CSELECT_IN | pycurl.CSELECT_OUT,
}


def _refuse(purpose: int, address: Any) -> int:
    return int(pycurl.SOCKET_BAD)


def _result(transfer: _Transfer, status: int, code: int, message: str) -> AttemptResult:
    latency = int((time.perf_counter() - transfer.start) * 1000)
    if code:
        kind, text = classify(code, message, transfer.blocked and not transfer.opened)
        return AttemptResult(error_kind=kind, error_message=text, latency_ms=latency)
    kind = ErrorKind.NONE
    text = ""
    if 300 <= status < 400:
        kind, text = ErrorKind.REDIRECT, f"redirect ({status}) not followed"
    elif not 200 <= status < 300:
        kind, text = ErrorKind.HTTP_STATUS, f"HTTP {status}"
    return AttemptResult(
        http_status=status,
        error_kind=kind,
        error_message=text,
        latency_ms=latency,
        # No PostgreSQL text column holds NUL: one in an answer failed every attempt write.
        response_body=b"".join(transfer.body).decode("utf-8", "replace").replace("\x00", "\ufffd"),
        retry_after=parse_retry_after(transfer.retry_after, utcnow())
        if transfer.retry_after
        else None,
    )


def classify(code: int, message: str, blocked: bool) -> tuple[ErrorKind, str]:
    """Maps a libcurl error to an error kind and a short message without secrets (libcurl's
    own text names at most the host and port, which the subscriber already knows)."""
    if blocked:
        return ErrorKind.SSRF_BLOCKED, "the host resolves only to non-public addresses"
    if code in _TIMEOUT:
        return ErrorKind.TIMEOUT, "no answer within the attempt timeout"
    if code in _DNS:
        return ErrorKind.DNS, "host name did not resolve"
    if code in _TLS:
        return ErrorKind.TLS, f"TLS failed: {message[:200]}"
    if code == pycurl.E_UNSUPPORTED_PROTOCOL:
        return ErrorKind.SSRF_BLOCKED, "scheme not allowed"
    return ErrorKind.CONNECTION, f"connection failed: {message[:200]}"


def _ca_bundle(extra: Path | None) -> str:
    """The system's trusted CAs, plus `extra` when given, as one PEM file for libcurl (which
    otherwise looks where its build machine kept them)."""
    paths = ssl.get_default_verify_paths()
    system = next(
        (Path(p) for p in (paths.cafile, paths.openssl_cafile) if p and Path(p).is_file()),
        None,
    )
    if extra is None and system is not None:
        return str(system)
    bundle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (lives as long as the process)
        prefix="webhooks-ca-", suffix=".pem", delete=False
    )
    with bundle:
        if system is not None:
            bundle.write(system.read_bytes() + b"\n")
        if extra is not None:
            bundle.write(extra.read_bytes())
    return bundle.name
