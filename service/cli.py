"""Command line: serve, dev (the `make run` default), migrate, healthcheck, key generators."""

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from service import config, logs
from service.config import Settings, SettingsError
from service.crypto import new_encryption_key
from service.domain.access import ADMIN, CATALOG, hash_key, new_api_key
from service.errors import StartupError

if TYPE_CHECKING:
    from kafka.embedded import EmbeddedBroker

DEV_DIR = Path(".dev")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    if args.command == "new-api-key":
        return _new_api_key(args.tenant, args.principal, args.scope)
    if args.command == "new-encryption-key":
        print(new_encryption_key())
        return 0
    if args.command == "settings":
        for name, default, doc in config.describe():
            print(f"{name}={default}\n    {doc}")
        return 0
    if args.command == "init-dev":
        key = write_dev_files(DEV_DIR)[0]
        print(f"wrote {DEV_DIR}/ (API key {key}, tenant dev, webhooks:admin and webhooks:catalog)")
        return 0
    if args.command == "demo-receiver":
        from service.demo_receiver import run  # deferred: only this command serves HTTP

        return run(args.host, args.port, args.secret)
    if args.command == "healthcheck":
        return _healthcheck(args.address)
    if args.command == "dev":
        broker = _prepare_dev_environment(os.environ)
        try:
            return _run("serve")
        finally:
            if broker is not None:
                broker.stop()
    return _run(args.command)


def parser() -> argparse.ArgumentParser:
    """Every subcommand (the compose checks parse the stack's commands with it)."""
    parser = argparse.ArgumentParser(prog="webhook-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the service with settings from WEBHOOKS_* variables")
    commands.add_parser("dev", help="run on SQLite with a generated development key (make run)")
    commands.add_parser("migrate", help="apply pending schema migrations and exit")
    commands.add_parser(
        "kafka-init",
        help="create the Kafka topics the service uses (ingest, audit, dead letters), idempotently",
    )
    check = commands.add_parser(
        "healthcheck", help="exit 0 when the gRPC health check says SERVING"
    )
    check.add_argument("--address", default=None, help="host:port (default: WEBHOOKS_GRPC_ADDRESS)")
    key = commands.add_parser("new-api-key", help="print a new API key and its keys-file entry")
    key.add_argument("--tenant", required=True)
    key.add_argument("--principal", required=True)
    key.add_argument("--scope", action="append", default=[], help="repeatable, e.g. webhooks:read")
    commands.add_parser(
        "new-encryption-key", help="print a key for WEBHOOKS_SECRET_ENCRYPTION_KEYS"
    )
    commands.add_parser("settings", help="list every WEBHOOKS_* setting with its default")
    receiver = commands.add_parser(
        "demo-receiver", help="a webhook receiver that prints and verifies what it gets"
    )
    receiver.add_argument("--host", default="127.0.0.1")
    receiver.add_argument("--port", type=int, default=8080)
    receiver.add_argument(
        "--secret", action="append", default=[], help="repeatable signing secret (whsec_...)"
    )
    commands.add_parser(
        "init-dev", help="write .dev/ (API key, keys file, encryption key, catalog) for make up"
    )
    return parser


def _run(command: str) -> int:
    import uvloop

    from service.app import serve  # deferred: key commands need no server imports

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"webhook-service: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    try:
        if command == "migrate":
            return _migrate(settings)
        if command == "kafka-init":
            return _kafka_init(settings)
        uvloop.run(serve(settings))
    except StartupError as exc:
        print(f"webhook-service: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def _migrate(settings: Settings) -> int:
    from service.store.database import open_database
    from service.store.migrations import migrate

    db = open_database(settings.database_url)
    with db.connection_context():
        applied = migrate(db)
    print(f"applied migrations: {applied or 'none pending'}")
    return 0


def _kafka_init(settings: Settings) -> int:
    from kafka.preflight import check_login
    from kafka.provisioning import TopicLayout, TopicsUnavailable, create_topics, service_topics
    from service.app import kafka_connection

    pattern = settings.kafka_topic_pattern
    names = service_topics(
        [] if pattern else settings.kafka_topics,
        settings.kafka_audit_topic,
        settings.kafka_dead_letter_topic,
    )
    layout = TopicLayout(
        settings.kafka_partitions, settings.kafka_replication_factor, settings.kafka_retention_hours
    )
    connection = kafka_connection(settings)

    async def provision() -> list[str]:
        await check_login(connection)
        return await create_topics(connection, names, layout)

    try:
        created = asyncio.run(provision())
    except StartupError as exc:
        print(f"webhook-service: kafka-init: {exc}", file=sys.stderr)
        return 2
    except TopicsUnavailable as exc:
        print(f"webhook-service: kafka-init: {exc}", file=sys.stderr)
        return 2
    for name in names:
        print(f"{name}: {'created' if name in created else 'exists'}")
    if pattern:
        print(f"ingest topics matching {pattern!r} are the producers' to create")
    return 0


def _healthcheck(address: str | None) -> int:
    from service.api.server import check_health

    target = address or os.environ.get("WEBHOOKS_GRPC_ADDRESS", "127.0.0.1:50051")
    healthy = asyncio.run(check_health(target))
    print("SERVING" if healthy else "NOT SERVING", file=sys.stderr)
    return 0 if healthy else 1


def _new_api_key(tenant: str, principal: str, scopes: list[str]) -> int:
    key = new_api_key()
    entry = {
        "id": principal,
        "sha256": hash_key(key),
        "tenant": tenant,
        "principal": principal,
        "scopes": scopes,
    }
    print(f"API key (shown once, give it to the caller): {key}")
    print('Add this entry to the keys file\'s "keys" list:')
    print(json.dumps(entry, indent=2))
    return 0


def write_dev_files(dev_dir: Path) -> tuple[str, dict[str, str]]:
    """Creates `dev_dir` with a development API key (kept across runs), its keys file, an
    encryption key and the sample catalog; returns the key and the settings naming them."""
    dev_dir.mkdir(exist_ok=True)
    key_file = dev_dir / "dev-api-key"
    if not key_file.exists():
        key_file.write_text(new_api_key())
        key_file.chmod(0o600)
    key = key_file.read_text().strip()
    keys = {
        "keys": [
            {
                "id": "dev",
                "sha256": hash_key(key),
                "tenant": "dev",
                "principal": "developer",
                "scopes": [ADMIN, CATALOG],
            }
        ]
    }
    (dev_dir / "api-keys.json").write_text(json.dumps(keys, indent=2))
    enc_file = dev_dir / "encryption-key"
    if not enc_file.exists():
        enc_file.write_text(new_encryption_key())
        enc_file.chmod(0o600)
    catalog = dev_dir / "event-types.json"
    catalog.write_text(resources.files("service").joinpath("dev_catalog.json").read_text())
    defaults = {
        "WEBHOOKS_API_KEYS_FILE": str(dev_dir / "api-keys.json"),
        "WEBHOOKS_SECRET_ENCRYPTION_KEYS": enc_file.read_text().strip(),
        "WEBHOOKS_DATABASE_URL": f"sqlite:///{dev_dir / 'webhooks.db'}",
        "WEBHOOKS_EVENT_TYPES_FILE": str(catalog),
        "WEBHOOKS_ALLOW_HTTP": "true",
        "WEBHOOKS_SSRF_ALLOW_CIDRS": "127.0.0.0/8,::1/128",
        "WEBHOOKS_DEFAULT_TENANT": "dev",
    }
    return key, defaults


def _prepare_dev_environment(environ: "os._Environ[str]") -> "EmbeddedBroker | None":
    """Writes .dev/, starts the embedded broker unless WEBHOOKS_KAFKA_BOOTSTRAP_SERVERS names
    one, and prints how to call."""
    from kafka import topics
    from kafka.connection import KafkaConnection
    from kafka.embedded import EmbeddedBroker, free_port
    from kafka.provisioning import create_topics, service_topics

    key, defaults = write_dev_files(DEV_DIR)
    key_file = DEV_DIR / "dev-api-key"
    for name, value in defaults.items():
        environ.setdefault(name, value)
    broker = None
    if "WEBHOOKS_KAFKA_BOOTSTRAP_SERVERS" not in environ:
        broker = EmbeddedBroker(9092 if _port_free(9092) else free_port(), DEV_DIR / "tansu.log")
        broker.start()
        topic_names = service_topics(
            environ.get("WEBHOOKS_KAFKA_TOPICS", topics.DEFAULT_INGEST_TOPIC).split(","),
            environ.get("WEBHOOKS_KAFKA_AUDIT_TOPIC", topics.DELIVERY_ATTEMPTS_TOPIC),
            environ.get("WEBHOOKS_KAFKA_DEAD_LETTER_TOPIC", topics.DEAD_LETTER_TOPIC),
        )
        asyncio.run(create_topics(KafkaConnection(broker.bootstrap), topic_names))
        environ["WEBHOOKS_KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        environ.setdefault("WEBHOOKS_KAFKA_IDEMPOTENCE", "false")  # tansu has no InitProducerId
    address = environ.get("WEBHOOKS_GRPC_ADDRESS", "127.0.0.1:50051")
    metrics = environ.get("WEBHOOKS_METRICS_ADDRESS", "127.0.0.1:9464")
    ctl = ".venv/bin/webhookctl" + ("" if address == "127.0.0.1:50051" else f" --address {address}")
    print(
        "webhook-service (development defaults, Ctrl-C to stop)\n"
        f"  gRPC      {address} (health and reflection on)\n"
        f"  API key   {key}  (tenant dev, webhooks:admin + catalog; kept in {key_file})\n"
        f"  metrics   http://{metrics}/metrics\n"
        f"  database  {DEV_DIR / 'webhooks.db'}\n"
        f"  Kafka     {environ['WEBHOOKS_KAFKA_BOOTSTRAP_SERVERS']}"
        f"{' (embedded tansu, memory only)' if broker else ''}\n"
        "  next, in another terminal (webhookctl reads the key from .dev/):\n"
        f"    {ctl} event-types list\n"
        f"    {ctl} demo        # or: make demo",
        flush=True,
    )
    return broker


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
