"""docker-compose.yml must only run commands the CLI really has, on the Kafka version
the local broker runs (the one the tests and fault runs exercise)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet.settings import DEFAULT_KAFKA_VERSION
from fleetctl.cli import resolve
from workers.loading import load_app

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _services() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load(
        (ROOT / "docker-compose.yml").read_text()
    )["services"]
    return services


def _fleet_commands() -> list[list[str]]:
    return [
        command
        for service in _services().values()
        if isinstance(command := service.get("command"), list) and command[0] == "fleet"
    ]


def test_compose_runs_the_kafka_version_of_the_local_broker() -> None:
    # Compose ran 4.1.0 while the local broker, every test and every fault run used 4.2.1.
    assert _services()["kafka"]["image"] == f"apache/kafka:{DEFAULT_KAFKA_VERSION}"


def test_compose_runs_orchestrator_worker_and_topics() -> None:
    subcommands = sorted(command[1] for command in _fleet_commands())
    assert subcommands == ["orchestrator", "topics", "worker"]


@pytest.mark.parametrize("command", _fleet_commands(), ids=lambda c: c[1])
def test_every_compose_command_parses_in_the_cli(command: list[str]) -> None:
    invocation = resolve(command[1:])
    assert invocation.path[0] == command[1]
    if invocation.path == ("worker",):
        app = invocation.params["app"]
        assert load_app(app).capabilities  # the app the pool runs really exists
