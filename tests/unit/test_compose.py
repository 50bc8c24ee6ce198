"""docker-compose.yml must only run commands the CLI really has."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleetctl.cli import build_parser
from workers.app import load_app

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _fleet_commands() -> list[list[str]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = [
        service["command"]
        for service in compose["services"].values()
        if isinstance(service.get("command"), list) and service["command"][0] == "fleet"
    ]
    return commands


def test_compose_runs_orchestrator_worker_and_topics() -> None:
    subcommands = sorted(command[1] for command in _fleet_commands())
    assert subcommands == ["orchestrator", "topics", "worker"]


@pytest.mark.parametrize("command", _fleet_commands(), ids=lambda c: c[1])
def test_every_compose_command_parses_in_the_cli(command: list[str]) -> None:
    args = build_parser().parse_args(command[1:])
    assert args.command == command[1]
    if args.command == "worker":
        assert load_app(args.app).capabilities  # the app the pool runs really exists
