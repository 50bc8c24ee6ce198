"""Fixtures of the real-broker tests that run a fleet of processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.kafka.client import FleetClient
from fleet.settings import Settings
from fleetctl.supervisor import Supervisor


@pytest.fixture
def env(kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[Settings, Supervisor, FleetClient]]:
    """Fresh topics, applied, and one worker pool; the test starts its orchestrators."""
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FLEET_TOPIC_PREFIX": f"rc-{uuid.uuid4().hex[:8]}.",
        }
    )
    with Supervisor(settings, tmp_path / "logs") as supervisor:
        topics = supervisor.start("topics", ["topics", "apply"])
        assert topics.process.wait(120) == 0, topics.log_tail()
        supervisor.start(
            "worker", ["worker", "--app", "workers.examples:app", "--concurrency", "16"]
        )
        client = FleetClient(settings, role="test")
        yield settings, supervisor, client
        client.close()
