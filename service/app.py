"""The composition root: wires settings, store, use cases and the gRPC server, and runs them."""

import asyncio
import json
import logging
import signal
from collections.abc import Mapping

from service.api.server import GrpcServer
from service.api.servicer import WebhookServicer
from service.catalog import CatalogError, CatalogService
from service.config import Settings
from service.crypto import SecretBox
from service.domain.access import KeyEntry, parse_keys
from service.errors import Unavailable
from service.store.database import open_database
from service.store.event_types import EventTypeStore
from service.store.migrations import migrate
from service.store.runner import StoreRunner
from service.store.subscriptions import SubscriptionStore
from service.subscriptions import SubscriptionService

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The service cannot start; the message says what to fix."""


def load_keys(settings: Settings) -> dict[str, KeyEntry]:
    path = settings.api_keys_file
    try:
        return parse_keys(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise StartupError(f"WEBHOOKS_API_KEYS_FILE {path}: {exc}") from None


class App:
    """One service instance. `start()` returns the bound gRPC port; `stop()` drains."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._keys: Mapping[str, KeyEntry] = {}
        self._runner: StoreRunner | None = None
        self._grpc: GrpcServer | None = None

    async def start(self) -> int:
        settings = self.settings
        self._keys = load_keys(settings)
        db = open_database(settings.database_url)
        self._runner = runner = StoreRunner(db, settings.store_threads)
        try:
            applied = await runner.call(migrate, db)
        except Unavailable:
            raise StartupError(
                f"cannot reach the database at {_safe_url(settings.database_url)}"
            ) from None
        if applied:
            log.info("schema migrated", extra={"versions": applied})
        box = SecretBox(settings.secret_encryption_keys)
        event_types = EventTypeStore(db)
        catalog = CatalogService(event_types)
        if settings.event_types_file is not None:
            try:
                count = await runner.call(catalog.load_file, settings.event_types_file)
            except CatalogError as exc:
                raise StartupError(f"WEBHOOKS_EVENT_TYPES_FILE {exc}") from None
            log.info("event type catalog loaded", extra={"count": count})
        subscriptions = SubscriptionService(SubscriptionStore(db, box), event_types, settings)
        servicer = WebhookServicer(runner, subscriptions, catalog, lambda: self._keys)
        self._grpc = GrpcServer(settings, servicer)
        port = await self._grpc.start()
        log.info("serving gRPC", extra={"address": settings.grpc_address, "port": port})
        return port

    def reload_keys(self) -> None:
        """Re-reads the keys file (SIGHUP); keeps the old keys if the new file is invalid."""
        try:
            self._keys = load_keys(self.settings)
            log.info("API keys reloaded", extra={"count": len(self._keys)})
        except StartupError as exc:
            log.error("API keys not reloaded: %s", exc)

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(self.settings.shutdown_grace_seconds)
        if self._runner is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._runner.close)
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully; SIGHUP reloads API keys."""
    app = App(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload_keys)
    try:
        await app.start()
        await stopping.wait()
        log.info("shutting down")
    finally:
        await app.stop()


def _safe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':')[0]}@{tail}"
