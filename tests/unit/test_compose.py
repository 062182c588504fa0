"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine here): the file
parses, each service's settings validate, topics match, every command and check exists."""

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import parser, write_dev_files
from service.config import Settings
from service.crypto import new_encryption_key

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = sorted(name for name, spec in SERVICES.items() if spec.get("build") == ".")
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:?message} and ${VAR:-default} forms."""

    def sub(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in env:
            return env[name]
        if op == ":-":
            return rest
        raise AssertionError(f"${{{name}}} is unset: {rest}")

    return re.sub(r"\$\{([A-Z0-9_]+)(:\?|:-)?([^}]*)\}", sub, value)


def _container_env(name: str, dev_dir: Path, shell: dict[str, str] | None = None) -> dict[str, str]:
    """The service's environment as its container sees it, with mounted container paths
    replaced by the host files the volumes bring in (written as `make up` writes them)."""
    spec = SERVICES[name]
    shell = {"WEBHOOKS_SECRET_ENCRYPTION_KEYS": new_encryption_key(), **(shell or {})}
    env = {k: _interpolate(str(v), shell) for k, v in (spec.get("environment") or {}).items()}
    for volume in spec.get("volumes") or []:
        host, container = volume.split(":")[:2]
        assert host.startswith("./.dev/"), volume
        source = dev_dir / host.removeprefix("./.dev/")
        assert source.is_file(), f"{name}: {host} is not written by `webhook-service init-dev`"
        env = {k: v.replace(container, str(source)) for k, v in env.items()}
    return env


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / ".dev"
    write_dev_files(path)
    return path


def test_the_stack_has_every_part() -> None:
    assert set(SERVICES) == {
        "kafka",
        "kafka-init",
        "postgres",
        "migrate",
        "webhooks",
        "demo-receiver",
    }
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert "KAFKA_ZOOKEEPER_CONNECT" not in kafka["environment"]
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    assert OURS == ["demo-receiver", "kafka-init", "migrate", "webhooks"]


@pytest.mark.parametrize("name", ["migrate", "webhooks"])
def test_service_environment_validates_against_the_settings(name: str, dev_dir: Path) -> None:
    settings = Settings.from_env(_container_env(name, dev_dir))
    assert settings.database_url.startswith("postgresql://")
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    host, port = settings.grpc_address.rsplit(":", 1)
    assert host == "0.0.0.0" and f"{port}:{port}" in SERVICES["webhooks"]["ports"]
    # The default fetch wait is short for the embedded broker; real Kafka answers fetches
    # as soon as records arrive, so a short wait there only polls an idle broker.
    assert settings.kafka_fetch_max_wait_ms >= 100


def test_the_shell_points_the_stack_at_a_secured_cluster(dev_dir: Path) -> None:
    shell = {
        "WEBHOOKS_KAFKA_BOOTSTRAP_SERVERS": "broker.example:9096",
        "WEBHOOKS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "WEBHOOKS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "WEBHOOKS_KAFKA_SASL_USERNAME": "webhooks-prod",
        "WEBHOOKS_KAFKA_SASL_PASSWORD": "from-the-shell",
        "WEBHOOKS_KAFKA_GROUP_ID": "webhooks-prod",
        "WEBHOOKS_KAFKA_CLIENT_ID": "webhooks-prod-1",
    }
    for name in ("webhooks", "kafka-init"):
        settings = Settings.from_env(_container_env(name, dev_dir, shell))
        assert settings.kafka_bootstrap_servers == "broker.example:9096"
        assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == (
            "SASL_SSL",
            "SCRAM-SHA-512",
        )
        assert settings.kafka_group_id == settings.kafka_sasl_username == "webhooks-prod"
        assert settings.kafka_client_id == "webhooks-prod-1"
        assert settings.kafka_sasl_password == "from-the-shell"


def test_init_creates_exactly_the_topics_the_service_uses(dev_dir: Path) -> None:
    """The service's own kafka-init, with the service's settings: the topics `serve` checks."""
    init = SERVICES["kafka-init"]
    assert init["command"] == ["kafka-init"]
    assert init["environment"] == SERVICES["webhooks"]["environment"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert Settings.from_env(_container_env("kafka-init", dev_dir)).kafka_enabled


def test_commands_and_healthchecks_exist() -> None:
    cli = parser()
    for name in OURS:
        cli.parse_args(SERVICES[name]["command"])  # exits (fails the test) if unknown
    check = SERVICES["webhooks"]["healthcheck"]["test"]
    assert check[:2] == ["CMD", "webhook-service"] and check[1] in SCRIPTS
    assert cli.parse_args(check[2:]).command == "healthcheck"


def test_dependencies_wait_for_health_or_completion() -> None:
    conditions = {"service_healthy", "service_completed_successfully"}
    for name, spec in SERVICES.items():
        for needed, rule in (spec.get("depends_on") or {}).items():
            assert needed in SERVICES, (name, needed)
            assert rule["condition"] in conditions, (name, needed)
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[needed], f"{name} waits on {needed}'s health"
            else:
                assert "healthcheck" not in SERVICES[needed]  # a one-shot step
    webhooks = SERVICES["webhooks"]["depends_on"]
    assert webhooks["migrate"]["condition"] == "service_completed_successfully"
    assert webhooks["kafka-init"]["condition"] == "service_completed_successfully"


def test_dockerfile_entry_point_command_and_sources_exist() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    instructions: dict[str, list[str]] = {}
    for line in lines:
        keyword, _, rest = line.partition(" ")
        instructions.setdefault(keyword, []).append(rest)
    [entry] = instructions["ENTRYPOINT"]
    assert yaml.safe_load(entry) == ["webhook-service"] and "webhook-service" in SCRIPTS
    assert SCRIPTS["webhook-service"] == "service.cli:main"
    [cmd] = instructions["CMD"]
    assert parser().parse_args(yaml.safe_load(cmd)).command == "serve"
    [health] = instructions["HEALTHCHECK"]
    assert health.endswith('CMD ["webhook-service", "healthcheck"]')
    for copy in instructions["COPY"]:
        *sources, _ = shlex.split(copy)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing"
    copied = {source for c in instructions["COPY"] for source in shlex.split(c)[:-1]}
    # The installed packages (pyproject: service*, kafka*, and webhooks* from generated/).
    assert {"service", "kafka", "generated", "pyproject.toml"} <= copied
