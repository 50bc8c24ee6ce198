"""One orchestrator and one worker pool with a small market, for the market's tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleet.kafka.client import FleetClient
from fleet.settings import Settings
from fleetctl.supervisor import Supervisor, child_env
from tests.fleet_cli import free_port, run_fleet
from tests.integration.test_workflows import Fleet

CREDIT = 1_000_000
# Bids of 3 credits a unit (the tenant's default max price), reserve 1: a lone bid pays 1.
POLICY = """
pools:
  gpu: {capacity: 2, reserve: 1, lease_ttl_ms: 60000}
bands: [low, high]
tenants:
  default: {bands: [low, high], default_band: low, default_max_price: 3, budget_default: 10}
default_tenant: default
round_ms: 100
"""


@contextmanager
def market_fleet(kafka_bootstrap: str, home: Path, prefix: str) -> Iterator[Fleet]:
    """Topics applied, an orchestrator (metrics on a free port) and a worker running the
    example app, all on POLICY; every process must exit 0 when it ends."""
    (home / "market.yaml").write_text(POLICY)
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FLEET_TOPIC_PREFIX": f"{prefix}-{uuid.uuid4().hex[:8]}.",
            "FLEET_MARKET_FILE": str(home / "market.yaml"),
        }
    )
    applied = run_fleet(child_env(settings), "topics", "apply")
    assert applied.returncode == 0, applied.stderr
    metrics_port = free_port()
    with Supervisor(settings, home) as supervisor:
        supervisor.start("orchestrator", ["orchestrator", "--metrics-port", str(metrics_port)])
        supervisor.start(
            "worker", ["worker", "--app", "workers.examples:app", "--concurrency", "8"]
        )
        client = FleetClient(settings, role="test")
        yield Fleet(settings, client, supervisor, metrics_port)
        client.close()
        codes = supervisor.stop_all()
        logs = {c.name: c.log_tail() for c in supervisor.children}
        assert codes == {"orchestrator": 0, "worker": 0}, logs
