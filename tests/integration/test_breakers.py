"""Circuit breakers on a real broker: a capability fails, its breaker opens, its tasks wait
(or fail with BreakerOpen), the state survives the orchestrator's kill -9, and after the
worker recovers the breaker half-opens, lets its trials through and closes.

One orchestrator with FLEET_BREAKERS on and a small policy (2 failures of 4 calls within
30 s open it for 25 s, 2 trials close it), one worker of ``tests.apps:app`` whose
``t.fragile`` fails while a file exists.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.kafka.client import FleetClient
from fleet.messages import EventKind, WorkflowEvent
from fleet.settings import Settings
from fleetctl.supervisor import Supervisor, child_env
from tests.fleet_cli import run_fleet

pytestmark = pytest.mark.kafka

POLICY = {
    "FLEET_BREAKERS": "true",
    "FLEET_BREAKER_FAILURE_RATE": "0.5",
    "FLEET_BREAKER_WINDOW_S": "30",
    "FLEET_BREAKER_MIN_CALLS": "4",
    "FLEET_BREAKER_COOLDOWN_S": "25",
    "FLEET_BREAKER_HALF_OPEN_CALLS": "2",
}


@pytest.fixture
def fleet(
    kafka_bootstrap: str, tmp_path: Path
) -> Iterator[tuple[Settings, Supervisor, FleetClient]]:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FLEET_TOPIC_PREFIX": f"cb-{uuid.uuid4().hex[:8]}.",
        }
    )
    with Supervisor(settings, tmp_path / "logs") as supervisor:
        topics = supervisor.start("topics", ["topics", "apply"])
        assert topics.process.wait(120) == 0, topics.log_tail()
        supervisor.start("worker", ["worker", "--app", "tests.apps:app", "--concurrency", "4"])
        client = FleetClient(settings, role="test")
        yield settings, supervisor, client
        client.close()


def fragile(flag: Path, no_agent_timeout_s: float = 120) -> dict[str, Any]:
    step = {
        "id": "f",
        "capability": "t.fragile",
        "input": {"broken_while": str(flag)},
        "no_agent_timeout_s": no_agent_timeout_s,
    }
    return {"name": "fragile", "steps": [step], "output": "$.steps.f.output"}


class Events:
    """Every event since the fixture started, read as the test goes."""

    def __init__(self, client: FleetClient) -> None:
        self.client = client
        self.consumer = client.event_consumer(from_beginning=True)
        self.seen: list[WorkflowEvent] = []

    def until(self, done: Callable[[list[WorkflowEvent]], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self.seen):
            assert time.monotonic() < deadline, [(e.workflow_id, e.kind) for e in self.seen]
            self.seen += list(self.client.events(self.consumer, timeout_s=0.5))

    def of(self, workflow_id: str) -> list[WorkflowEvent]:
        return [e for e in self.seen if e.workflow_id == workflow_id]

    def terminal(self, workflow_id: str) -> WorkflowEvent | None:
        return next((e for e in self.of(workflow_id) if e.kind.terminal), None)


def breaker(settings: Settings) -> dict[str, Any]:
    shown = run_fleet(child_env(settings, POLICY), "breakers", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {(r["capability"], r["version"]): r for r in json.loads(shown.stdout)}
    return rows.get(("t.fragile", "*"), {"state": "none"})


def wait_for_state(settings: Settings, state: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (row := breaker(settings))["state"] != state:
        assert time.monotonic() < deadline, f"breaker {row}, not {state}"
        time.sleep(0.5)
    return row


def test_a_failing_capability_trips_its_breaker_which_holds_across_a_restart_and_recovers(
    fleet: tuple[Settings, Supervisor, FleetClient], tmp_path: Path
) -> None:
    settings, supervisor, client = fleet
    flag = tmp_path / "broken"
    flag.write_text("the model is down")
    # A named instance: its replacement takes its partitions back at once, well within
    # the cool-down (an unnamed one waits out the session timeout first).
    named = ["orchestrator", "--instance-id", "cb-1"]
    first = supervisor.start("orchestrator-1", named, env=POLICY)
    events = Events(client)

    # Four calls, all failed: past 50 % with the minimum of 4, the breaker opens.
    failing = [client.submit(fragile(flag)) for _ in range(4)]
    events.until(lambda _: all(events.terminal(w) for w in failing), 60)
    assert {events.terminal(w).kind for w in failing} == {EventKind.FAILED}  # type: ignore[union-attr]
    opened = wait_for_state(settings, "open", 30)
    assert (opened["calls"], opened["failed"], opened["failure_rate"]) == (4, 4, 1.0)
    per_version = run_fleet(child_env(settings, POLICY), "breakers", "--json")
    assert {"capability": "t.fragile", "version": "1.0.0"}.items() <= json.loads(
        per_version.stdout
    )[1].items()
    opened_at = opened["opened_at_ms"] / 1000
    assert time.time() - opened_at < 10, "opened too long ago for the rest of the test"

    # kill -9 while open: the next instance rebuilds the breaker from the observations.
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    supervisor.start("orchestrator-2", named, env=POLICY)
    held = client.submit(fragile(flag))  # waits for the breaker
    doomed = client.submit(fragile(flag, no_agent_timeout_s=1))  # gives up waiting first

    def waiting(workflow_id: str) -> Callable[[list[WorkflowEvent]], bool]:
        return lambda _: any(e.kind is EventKind.STEP_WAITING for e in events.of(workflow_id))

    events.until(waiting(held), 60)
    [wait] = [e for e in events.of(held) if e.kind is EventKind.STEP_WAITING]
    assert wait.reason is not None and "circuit breaker of t.fragile open" in wait.reason
    assert not any(e.kind is EventKind.STEP_STARTED for e in events.of(held))
    events.until(lambda _: events.terminal(doomed) is not None, 60)
    end = events.terminal(doomed)
    assert end is not None and end.kind is EventKind.FAILED and end.error is not None
    assert end.error.type == "BreakerOpen", end.error
    assert time.time() < opened_at + 25, "the restart outlasted the cool-down: nothing shown"

    # The worker recovers; after the cool-down the held task is a trial, and succeeds.
    flag.unlink()
    events.until(lambda _: events.terminal(held) is not None, 60)
    half_open_at = time.time()
    assert events.terminal(held).kind is EventKind.COMPLETED  # type: ignore[union-attr]
    started = next(e for e in events.of(held) if e.kind is EventKind.STEP_STARTED)
    assert started.at_ms / 1000 >= opened_at + 25 - 1  # not before the cool-down ended
    assert breaker(settings)["state"] == "half-open"  # one trial of two succeeded
    second = client.submit(fragile(flag))
    events.until(lambda _: events.terminal(second) is not None, 60)
    assert events.terminal(second).kind is EventKind.COMPLETED  # type: ignore[union-attr]
    closed = wait_for_state(settings, "closed", 30)
    assert closed["calls"] == 0 and closed["opened_at_ms"] is None
    print(
        f"breaker: opened, restarted, half-open {half_open_at - opened_at:.1f} s after opening "
        f"(cool-down 25 s), closed {time.time() - opened_at:.1f} s after opening"
    )


def test_a_tripped_breaker_sends_the_steps_tasks_down_their_fallback_chain(
    fleet: tuple[Settings, Supervisor, FleetClient], tmp_path: Path
) -> None:
    """Failing tasks of t.fragile fall back to t.echo one by one (retries exhausted) until
    the breaker opens; then the next task goes to t.echo at once, never to t.fragile."""
    settings, supervisor, client = fleet
    flag = tmp_path / "broken"
    flag.write_text("the model is down")
    supervisor.start("orchestrator", ["orchestrator"], env=POLICY)
    events = Events(client)

    def chained() -> dict[str, Any]:
        doc = fragile(flag)
        doc["steps"][0]["fallback"] = ["t.echo"]
        return doc

    first = [client.submit(chained()) for _ in range(4)]
    events.until(lambda _: all(events.terminal(w) for w in first), 60)
    for workflow_id in first:
        assert events.terminal(workflow_id).kind is EventKind.COMPLETED  # type: ignore[union-attr]
        started = [e for e in events.of(workflow_id) if e.kind is EventKind.STEP_STARTED]
        assert [e.attempt for e in started] == [1, 2]
        assert started[1].reason is not None
        assert (
            "escalated to t.echo (fallback 1 of 1) after t.fragile: attempt 1" in started[1].reason
        )
        assert "the downstream model is failing" in started[1].reason
        [done] = [e for e in events.of(workflow_id) if e.kind is EventKind.STEP_COMPLETED]
        assert done.reason == "done by fallback t.echo" and done.worker_id
    wait_for_state(settings, "open", 30)

    later = client.submit(chained())
    events.until(lambda _: events.terminal(later) is not None, 60)
    assert events.terminal(later).kind is EventKind.COMPLETED  # type: ignore[union-attr]
    [started] = [e for e in events.of(later) if e.kind is EventKind.STEP_STARTED]
    assert started.attempt == 2 and started.reason is not None
    assert started.reason.startswith(
        "escalated to t.echo (fallback 1 of 1) after t.fragile: circuit breaker of t.fragile open"
    )
