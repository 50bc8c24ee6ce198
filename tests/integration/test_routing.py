"""Route only to the living, on a real broker with real processes: a step whose capability
has no live agent waits (STEP_WAITING, and `fleet submit` warns) and runs once a worker
starts; it fails with NoLiveAgent after a short no_agent_timeout_s; and it keeps waiting
across an orchestrator killed with -9, to run once its worker comes."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.agent_messages import AgentHeartbeat
from fleet.codec import Codec, SchemaStore
from fleet.kafka import KafkaClients, TopicReader
from fleet.kafka.client import FleetClient
from fleet.kafka.readback import partitions_of, records_to_end
from fleet.messages import EventKind, WorkflowEvent
from fleet.settings import Settings
from fleet.topology import Topics
from fleetctl.supervisor import Child, Supervisor, child_env
from tests.fleet_cli import run_fleet

pytestmark = pytest.mark.kafka

HEARTBEAT_S = 1.0

AGENTS = """\
from fleet import App

app = App()


@app.capability("r.echo")
def echo(payload):
    return {"echo": payload}
"""


class Fleet:
    def __init__(self, settings: Settings, supervisor: Supervisor, tmp_path: Path) -> None:
        self.settings, self.supervisor = settings, supervisor
        (tmp_path / "routed_agents.py").write_text(AGENTS)
        self.env = {
            "PYTHONPATH": str(tmp_path),
            "FLEET_HEARTBEAT_S": str(HEARTBEAT_S),
            "FLEET_AGENT_STATE_DIR": str(tmp_path / "state"),
            "FLEET_ROUTE_LIVE_ONLY": "true",  # the default, stated: these tests are about it
        }
        self.client = FleetClient(settings, role="test")
        self.spec_path = tmp_path / "wf.json"

    def worker(self, name: str) -> Child:
        argv = ["worker", "--app", "routed_agents:app", "--concurrency", "2", "--grace", "5"]
        child = self.supervisor.start(name, argv, env=self.env)
        wait(lambda: "agent registered" in child.log_path.read_text(), child=child)
        return child

    def orchestrator(self, name: str) -> Child:
        child = self.supervisor.start(name, ["orchestrator"], env=self.env)
        wait(lambda: "agent view caught up" in child.log_path.read_text(), child=child)
        return child

    def submit(self, spec: dict[str, Any]) -> tuple[str, str]:
        """``fleet submit`` as a user types it: (workflow id, what it said on stderr)."""
        self.spec_path.write_text(json.dumps(spec))
        done = run_fleet(
            child_env(self.settings, self.env), "submit", str(self.spec_path), "--id", spec["name"]
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip(), done.stderr

    def events_until(
        self, reader: TopicReader, workflow_id: str, kind: EventKind, timeout_s: float
    ) -> list[WorkflowEvent]:
        mine: list[WorkflowEvent] = []
        for event in self.client.events(
            reader,
            until=lambda e: e.workflow_id == workflow_id and e.kind is kind,
            timeout_s=timeout_s,
        ):
            if event.workflow_id == workflow_id:
                mine.append(event)
        assert mine and mine[-1].kind is kind, [(e.kind, e.reason, e.error) for e in mine]
        return mine

    def first_heartbeat_ms(self, agent_id_part: str) -> int:
        """When the newest agent of this test first heartbeated (its first record)."""
        codec = Codec(SchemaStore(self.settings.schemas_dir))
        assert self.settings.bootstrap_servers
        clients = KafkaClients(self.settings, self.settings.bootstrap_servers, role="test")
        topic = Topics(self.settings.topic_prefix).agent_heartbeats
        records = records_to_end(
            clients, topic, partitions_of(clients, topic), time.monotonic() + 30
        )
        beats = [codec.decode(v, AgentHeartbeat) for r in records if (v := r.value()) is not None]
        latest = max(b.started_at_ms for b in beats if agent_id_part in b.agent_id)
        return min(b.at_ms for b in beats if b.started_at_ms == latest)


def wait(condition: Callable[[], bool], timeout_s: float = 90, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if child is not None:
            assert child.alive(), child.log_tail()
        assert time.monotonic() < deadline, child.log_tail() if child else "timed out"
        time.sleep(0.1)


@pytest.fixture
def fleet(settings: Settings, tmp_path: Path) -> Iterator[Fleet]:
    with Supervisor(settings, tmp_path / "logs") as supervisor:
        topics = supervisor.start("topics", ["topics", "apply"])
        assert topics.process.wait(120) == 0, topics.log_tail()
        f = Fleet(settings, supervisor, tmp_path)
        # The capability's topic exists (its first worker created it), its agent is gone
        # (stopped cleanly: tombstoned): the case of a fleet whose last agent left.
        gone = f.worker("first-worker")
        assert supervisor.stop(gone) == 0, gone.log_tail()
        yield f
        f.client.close()


def echo_spec(name: str, **step: Any) -> dict[str, Any]:
    return {
        "name": name,
        "input": {"n": 1},
        "steps": [{"id": "s", "capability": "r.echo", "input": {"n": "$.input.n"}, **step}],
        "output": "$.steps.s.output",
    }


def test_a_step_waits_for_a_live_agent_and_runs_when_a_worker_starts(fleet: Fleet) -> None:
    fleet.orchestrator("orchestrator")
    reader = fleet.client.event_consumer(from_beginning=False)
    workflow_id, said = fleet.submit(echo_spec(f"wait-{uuid.uuid4().hex[:6]}"))
    assert "no live agent serves capability 'r.echo'" in said, said
    assert "wait up to 300 s" in said
    events = fleet.events_until(reader, workflow_id, EventKind.STEP_WAITING, 60)
    waiting = events[-1]
    assert waiting.reason is not None and "none is registered" in waiting.reason
    assert (waiting.step_id, waiting.task_id, waiting.attempt) == ("s", f"{workflow_id}/s/0", 1)
    time.sleep(3)  # nothing goes to the dead queue meanwhile
    assert [
        e for e in fleet.client.events(reader, timeout_s=1) if e.workflow_id == workflow_id
    ] == []

    fleet.worker("worker")
    events = fleet.events_until(reader, workflow_id, EventKind.COMPLETED, 60)
    assert [e.kind for e in events] == [
        EventKind.STEP_STARTED,
        EventKind.STEP_COMPLETED,
        EventKind.COMPLETED,
    ]
    assert events[-1].output == {"echo": {"n": 1}}
    delay_ms = events[0].at_ms - fleet.first_heartbeat_ms("routed_agents")
    print(f"dispatched {delay_ms} ms after the first heartbeat of its worker's agent")
    assert delay_ms < 10_000


def test_a_step_fails_with_no_live_agent_after_its_timeout(fleet: Fleet) -> None:
    fleet.orchestrator("orchestrator")
    reader = fleet.client.event_consumer(from_beginning=False)
    name = f"nobody-{uuid.uuid4().hex[:6]}"
    workflow_id, said = fleet.submit(echo_spec(name, no_agent_timeout_s=3))
    assert "wait up to 3 s" in said, said
    events = fleet.events_until(reader, workflow_id, EventKind.FAILED, 60)
    assert [e.kind for e in events] == [
        EventKind.ACCEPTED,
        EventKind.STEP_WAITING,
        EventKind.FAILED,
    ]
    error = events[-1].error
    assert error is not None and (error.type, error.step_id) == ("NoLiveAgent", "s")
    assert "within its no_agent_timeout_s of 3 s" in error.message
    assert 3_000 <= events[-1].at_ms - events[1].at_ms < 10_000


def test_a_waiting_step_survives_an_orchestrator_kill_and_runs_after_restart(
    fleet: Fleet,
) -> None:
    first = fleet.orchestrator("orchestrator-1")
    reader = fleet.client.event_consumer(from_beginning=False)
    workflow_id, _ = fleet.submit(echo_spec(f"crash-{uuid.uuid4().hex[:6]}"))
    fleet.events_until(reader, workflow_id, EventKind.STEP_WAITING, 60)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)

    second = fleet.orchestrator("orchestrator-2")
    wait(lambda: "partitions assigned" in second.log_path.read_text(), 120, second)
    time.sleep(3)  # restored, it still waits: nothing was dispatched, nothing failed
    assert [
        e for e in fleet.client.events(reader, timeout_s=1) if e.workflow_id == workflow_id
    ] == []

    fleet.worker("worker")
    events = fleet.events_until(reader, workflow_id, EventKind.COMPLETED, 90)
    assert [e.kind for e in events] == [
        EventKind.STEP_STARTED,
        EventKind.STEP_COMPLETED,
        EventKind.COMPLETED,
    ]
    assert events[0].attempt == 1
