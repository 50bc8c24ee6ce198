"""Agents on a real broker, as real processes: a worker's agent appears in ``fleet agents``
with its A2A cards; killed (kill -9), it goes stale, then dead, within the stated
heartbeats, and a restart is the same agent again; stopped cleanly, its cards and its
heartbeat are tombstoned."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.codec import Codec, SchemaStore
from fleet.kafka import KafkaClients, produce
from fleet.kafka.registry import AgentFeed, AgentRegistry
from fleet.liveness import DEAD_AFTER, STALE_AFTER, AgentRow, Liveness
from fleet.messages import TaskAssigned
from fleet.settings import Settings
from fleet.topology import Topics
from fleetctl.supervisor import Child, Supervisor, child_env
from tests.a2a_cards import a2a_card
from tests.fleet_cli import free_port, run_fleet

pytestmark = pytest.mark.kafka

HEARTBEAT_S = 1.0
JSON_FIELDS = {
    "agent_id",
    "status",
    "capabilities",
    "in_flight",
    "capacity",
    "heartbeat_age_s",
    "error_rate",
    "p95_ms",
}

AGENTS = """\
from fleet import App

app = App()


@app.capability(
    "a.classify",
    version="2.1.0",
    description="Sorts a text into a label.",
    tags=["nlp"],
    output_schema={"type": "object", "properties": {"label": {"type": "string"}}},
)
def classify(payload):
    return {"label": "billing"}


@app.capability("a.lookup")
def lookup(payload):
    return payload
"""


class Fleet:
    """A test's agents module, its workers, and ways to look at their agents."""

    def __init__(self, settings: Settings, supervisor: Supervisor, tmp_path: Path) -> None:
        self.settings, self.supervisor = settings, supervisor
        (tmp_path / "agents.py").write_text(AGENTS)
        self.env = {
            "PYTHONPATH": str(tmp_path),
            "FLEET_HEARTBEAT_S": str(HEARTBEAT_S),
            "FLEET_AGENT_STATE_DIR": str(tmp_path / "state"),
        }
        assert settings.bootstrap_servers
        self.clients = KafkaClients(settings, settings.bootstrap_servers, role="test")
        self.registry = AgentRegistry(self.clients)

    def worker(self, name: str, *args: str) -> Child:
        argv = ["worker", "--app", "agents:app", "--concurrency", "4", "--grace", "5", *args]
        child = self.supervisor.start(name, argv, env=self.env)
        self.wait(lambda: "agent registered" in child.log_path.read_text(), child=child)
        return child

    def wait(
        self, condition: Callable[[], bool], timeout_s: float = 60, child: Child | None = None
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if child is not None:
                assert child.alive(), child.log_tail()
            assert time.monotonic() < deadline, child.log_tail() if child else "timed out"
            time.sleep(0.1)

    def fleet(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_fleet(child_env(self.settings, self.env), *args)

    def agents_json(self, *args: str) -> list[dict[str, Any]]:
        done = self.fleet("agents", "--json", *args)
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    def row(self, agent_id: str) -> AgentRow | None:
        now_ms = int(time.time() * 1000)
        rows = [r for r in self.registry.view().rows(now_ms) if r.agent_id == agent_id]
        return rows[0] if rows else None

    def close(self) -> None:
        self.registry.close()


@pytest.fixture
def fleet(settings: Settings, tmp_path: Path) -> Iterator[Fleet]:
    with Supervisor(settings, tmp_path / "logs") as supervisor:
        topics = supervisor.start("topics", ["topics", "apply"])
        assert topics.process.wait(120) == 0, topics.log_tail()
        f = Fleet(settings, supervisor, tmp_path)
        yield f
        f.close()


def send_tasks(f: Fleet, capability: str, n: int) -> None:
    codec = Codec(SchemaStore(f.settings.schemas_dir))
    producer = f.clients.producer()
    for i in range(n):
        task = TaskAssigned(
            task_id=f"wf-agents/{capability}/{i}",
            workflow_id="wf-agents",
            step_id="s",
            capability=capability,
            attempt=1,
            input={"text": "refund"},
            dispatched_at_ms=int(time.time() * 1000),
        )
        produce(
            producer,
            Topics(f.settings.topic_prefix).tasks(capability),
            codec.encode(task),
            key=task.task_id,
        )
    assert producer.flush(30) == 0


def test_an_agent_appears_with_its_cards_and_a_clean_stop_tombstones_them(fleet: Fleet) -> None:
    feed = AgentFeed(fleet.clients)  # a live view, as an orchestrator keeps one
    port = free_port()
    child = fleet.worker(
        "agent-a", "--agent-id", "agent-a", "--region", "eu-west-1", "--metrics-port", str(port)
    )
    (row,) = fleet.agents_json()
    assert set(row) == JSON_FIELDS
    assert row["agent_id"] == "agent-a" and row["status"] == "serving"
    assert row["capabilities"] == [
        {"capability": "a.classify", "version": "2.1.0"},
        {"capability": "a.lookup", "version": "0.0.0"},
    ]
    assert (row["in_flight"], row["capacity"]) == (0, 4)
    assert row["heartbeat_age_s"] < 3 * HEARTBEAT_S
    assert [r["agent_id"] for r in fleet.agents_json("--capability", "a.lookup")] == ["agent-a"]
    assert fleet.agents_json("--capability", "nobody") == []

    def in_feed() -> list[str]:
        feed.poll(0.1)
        return [r.agent_id for r in feed.view.live(int(time.time() * 1000), "a.classify")]

    fleet.wait(lambda: in_feed() == ["agent-a"], timeout_s=30)
    assert [r.agent_id for r in feed.view.live(int(time.time() * 1000), "a.classify", "1.0")] == []

    # The whole agent's card on the metrics port, each capability's in the registry.
    url = f"http://127.0.0.1:{port}/.well-known/agent-card.json"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        whole = a2a_card(json.load(response))
    assert [s.id for s in whole.skills] == ["a.classify", "a.lookup"]
    done = fleet.fleet("agents", "card", "a.classify")
    assert done.returncode == 0, done.stderr
    card = json.loads(done.stdout)
    parsed = a2a_card(card)
    assert (parsed.name, parsed.version, parsed.description) == (
        "a.classify",
        "2.1.0",
        "Sorts a text into a label.",
    )
    params = card["capabilities"]["extensions"][0]["params"]
    assert params["region"] == "eu-west-1" and params["agent_id"] == "agent-a"
    assert params["task_topic"] == Topics(fleet.settings.topic_prefix).tasks("a.classify")
    assert params["output_schema"]["properties"]["label"] == {"type": "string"}
    assert fleet.fleet("agents", "card", "a.classify", "--version", "9.9.9").returncode == 1

    # Its heartbeats count the tasks it runs.
    send_tasks(fleet, "a.classify", 3)
    fleet.wait(
        lambda: (r := fleet.row("agent-a")) is not None and r.p95_ms is not None, child=child
    )
    row = fleet.agents_json()[0]
    assert row["error_rate"] == 0.0 and row["p95_ms"] is not None

    # A clean stop: the agent is gone, not dead; its cards with it.
    assert fleet.supervisor.stop(child, grace_s=30) == 0, child.log_tail()
    assert fleet.registry.cards() == []
    assert fleet.agents_json() == []
    assert fleet.fleet("agents", "card", "a.classify").returncode == 1
    fleet.wait(lambda: in_feed() == [] and len(feed.view) == 0, timeout_s=30)
    feed.close()


def test_a_killed_agent_goes_stale_then_dead_and_a_restart_is_the_same_agent(
    fleet: Fleet,
) -> None:
    agent_id = f"{socket.gethostname()}-agents-0"  # claimed: host, the app's module, slot 0
    child = fleet.worker("killed")
    fleet.wait(lambda: (r := fleet.row(agent_id)) is not None and r.liveness is Liveness.LIVE)
    time.sleep(1.5 * HEARTBEAT_S)  # a heartbeat or two after the first
    child.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    child.process.wait(10)

    seen: dict[Liveness, float] = {}
    statuses: set[str] = set()
    while Liveness.DEAD not in seen:
        row = fleet.row(agent_id)
        assert row is not None  # never forgotten: only a clean stop tombstones
        seen.setdefault(row.liveness, time.monotonic() - killed_at)
        if row.liveness is Liveness.STALE and not statuses:
            (cli_row,) = fleet.agents_json()  # as an operator sees it, while stale
            statuses.add(cli_row["status"])
        assert time.monotonic() - killed_at < (DEAD_AFTER + 5) * HEARTBEAT_S
        time.sleep(0.2)
    stale_s, dead_s = seen[Liveness.STALE], seen[Liveness.DEAD]
    print(f"liveness detection: stale after {stale_s:.1f} s, dead after {dead_s:.1f} s")
    # The last heartbeat was sent at most one interval before the kill; the view's read
    # adds a fraction of a second.
    assert (STALE_AFTER - 1) * HEARTBEAT_S <= stale_s <= (STALE_AFTER + 2) * HEARTBEAT_S
    assert (DEAD_AFTER - 1) * HEARTBEAT_S <= dead_s <= (DEAD_AFTER + 2) * HEARTBEAT_S
    assert "stale" in statuses
    (cli_row,) = fleet.agents_json()
    assert cli_row["status"] == "dead" and cli_row["agent_id"] == agent_id

    # Restarted, it claims the same id back: one agent, serving again.
    fleet.worker("restarted")
    fleet.wait(lambda: (r := fleet.row(agent_id)) is not None and r.liveness is Liveness.LIVE)
    assert [r["agent_id"] for r in fleet.agents_json()] == [agent_id]
    assert fleet.agents_json()[0]["status"] == "serving"
