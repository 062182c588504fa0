"""Builds the grpc.aio server: WebhookService, health, reflection, optional TLS/mTLS."""

import asyncio
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.api import reflection
from service.api.servicer import WebhookServicer, lenient_parser
from service.config import Settings
from webhooks.v1 import webhook_service_pb2 as pb
from webhooks.v1 import webhook_service_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["WebhookService"].full_name
# The health service name that says whether Kafka answers; "" (the whole service) stays
# SERVING meanwhile, since the API and deliveries already queued go on without it.
KAFKA_HEALTH = "webhooks.kafka"
# Whether the database answers. Without it no call or delivery can be recorded, so "" and
# the WebhookService name say NOT_SERVING too while it is away.
DATABASE_HEALTH = "webhooks.database"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class GrpcServer:
    """Owns the server and its health state."""

    def __init__(self, settings: Settings, servicer: WebhookServicer) -> None:
        self._settings = settings
        self._servicer = servicer
        # SO_REUSEPORT off: a second instance on the same port must fail, not share it.
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.server.add_generic_rpc_handlers((_service_handler(servicer),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable((SERVICE_NAME, health.SERVICE_NAME), self.server)
        self.port = 0  # the bound port once started (useful with port 0)
        self._not_serving = False

    async def start(self) -> None:
        """Binds and starts serving."""
        address = self._settings.grpc_address
        credentials = _credentials(self._settings)
        if credentials is None:
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, credentials)
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.port = port

    async def set_kafka_health(self, up: bool) -> None:
        status = health_pb2.HealthCheckResponse
        await self.health.set(KAFKA_HEALTH, status.SERVING if up else status.NOT_SERVING)

    async def set_database_health(self, up: bool) -> None:
        if self._not_serving:  # shutting down: stays NOT_SERVING
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if up
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME, DATABASE_HEALTH):
            await self.health.set(name, status)

    async def not_serving(self) -> None:
        """Every health service name says NOT_SERVING from now on (set once)."""
        if not self._not_serving:
            self._not_serving = True
            await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """NOT_SERVING; for WEBHOOKS_SHUTDOWN_DRAIN_SECONDS new calls are answered UNAVAILABLE
        (SHUTTING_DOWN) while callers move away; then the server stops listening and the
        calls in flight get up to `grace` seconds to finish. The drain is there because
        grpc core answers CANCELLED to a call that arrives as it shuts down (grpc#41785)."""
        await self.not_serving()
        self._servicer.draining = True
        await asyncio.sleep(self._settings.shutdown_drain_seconds)
        await self.server.stop(grace)


def _service_handler(
    servicer: pb_grpc.WebhookServiceServicer,
) -> "grpc.GenericRpcHandler[Any, Any]":
    """What the generated add_WebhookServiceServicer_to_server registers, but a request that
    does not parse (a string field of invalid UTF-8) reaches its handler as Undecodable,
    answered INVALID_ARGUMENT, instead of grpc's bare UNKNOWN."""
    service = pb.DESCRIPTOR.services_by_name["WebhookService"]
    handlers = {}
    for method in service.methods:  # every RPC is unary
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=lenient_parser(request_class.FromString),
            response_serializer=response_class.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (_read(settings.tls_key_file), _read(settings.tls_cert_file))
    client_ca = _read(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def check_health(address: str, wait_seconds: float = 3.0) -> bool:
    """True when the server at `address` reports SERVING (the `healthcheck` subcommand)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=wait_seconds
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
