"""The orchestrator's processing guarantee and commit interval, on a real broker.

at_least_once (no transactions) and exactly_once with a commit interval (a transaction
open across batches) must both run workflows to the right end, retries included, and
hand them over on a clean stop without repeating anything: the stop commits what is open.
"""

from __future__ import annotations

import time

import pytest

from fleet.kafka.client import FleetClient
from fleet.messages import EventKind
from fleet.settings import Settings
from fleetctl.supervisor import Child, Supervisor
from tests.integration.test_recovery import (
    assert_exactly_once,
    chain,
    terminal_events,
    wait_alive,
)

pytestmark = pytest.mark.kafka


def wait_logged(child: Child, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in child.log_path.read_text(errors="replace"):
        assert child.alive() and time.monotonic() < deadline, child.log_tail()
        time.sleep(0.2)


@pytest.mark.parametrize(
    "flags",
    [
        ["--guarantee", "at_least_once", "--commit-interval-ms", "100"],
        ["--guarantee", "exactly_once", "--commit-interval-ms", "500"],
    ],
    ids=["at_least_once", "exactly_once-interval"],
)
def test_workflows_complete_and_a_clean_handover_repeats_nothing(
    flags: list[str], env: tuple[Settings, Supervisor, FleetClient]
) -> None:
    _settings, supervisor, client = env
    first = supervisor.start("orchestrator-1", ["orchestrator", *flags])
    chains = {client.submit(chain(5, 200), flush=False) for _ in range(20)}
    # A retry is a durable timer: it fires inside an open transaction, too.
    flaky = client.submit(
        {
            "name": "flaky",
            "steps": [{"id": "f", "capability": "text.flaky", "input": {}, "retries": 2}],
            "output": "$.steps.f.output",
        }
    )
    client.flush()
    wait_logged(first, "partitions assigned")  # SIGTERM before its handler would kill it
    wait_alive(first, 1.5)  # mid-run: some steps of each chain are done
    assert supervisor.stop(first) == 0, first.log_tail()
    second = supervisor.start("orchestrator-2", ["orchestrator", *flags])

    events = terminal_events(client, chains | {flaky}, 90)
    assert second.alive(), second.log_tail()
    assert_exactly_once([e for e in events if e.workflow_id in chains], chains, 5)
    [retried] = [e for e in events if e.workflow_id == flaky]
    assert retried.kind is EventKind.COMPLETED, retried.error
    assert retried.output == {"ok": True}
