"""The ``fleet`` command against a running fleet, as a user types it: ``tail --workflow``
of a finished workflow returns at once (it waited forever), of a running one ends when
the workflow does; ``budget top-up`` refuses an ended or unknown workflow (it said
nothing and exited 0); ``kafka start`` keeps the local broker's data, ``--fresh`` wipes
it, ``kafka status`` says where it lives."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.kafka.client import FleetClient
from fleet.settings import Settings
from fleetctl.supervisor import Supervisor, child_env
from tests.fleet_cli import popen_fleet, run_fleet

pytestmark = pytest.mark.kafka

WAIT_S = 90.0
TAIL_S = 30.0  # a finished workflow's tail: its partition read once, then the end


@dataclass
class Fleet:
    settings: Settings
    client: FleetClient

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_fleet(child_env(self.settings), *args, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return popen_fleet(child_env(self.settings), *args)

    def finished(self, spec: dict[str, object]) -> str:
        consumer = self.client.event_consumer(from_beginning=False)
        try:
            workflow_id = self.client.submit(spec)
            outcome = self.client.wait(consumer, [workflow_id], WAIT_S).get(workflow_id)
        finally:
            consumer.close()
        assert outcome is not None, f"no outcome for {workflow_id}"
        return workflow_id


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FLEET_TOPIC_PREFIX": f"cli-{uuid.uuid4().hex[:8]}.",
        }
    )
    with Supervisor(settings, tmp_path_factory.mktemp("cli-logs")) as supervisor:
        topics = supervisor.start("topics", ["topics", "apply"])
        assert topics.process.wait(120) == 0, topics.log_tail()
        supervisor.start("orchestrator", ["orchestrator"])
        supervisor.start("worker", ["worker", "--app", "workers.examples:app"])
        client = FleetClient(settings, role="test")
        yield Fleet(settings, client)
        client.close()


def _noop(step_id: str, payload: object, needs: list[str] | None = None) -> dict[str, object]:
    return {"id": step_id, "capability": "noop", "input": payload, "needs": needs or []}


def test_tail_of_a_finished_workflow_prints_it_to_its_end_at_once(fleet: Fleet) -> None:
    spec = {"name": "done", "steps": [_noop("a", {"v": 7})], "output": "$.steps.a.output"}
    workflow_id = fleet.finished(spec)
    started = time.monotonic()
    tail = fleet.cli("tail", "--workflow", workflow_id, timeout=TAIL_S)
    assert tail.returncode == 0, tail.stderr
    assert time.monotonic() - started < TAIL_S
    lines = tail.stdout.splitlines()
    assert lines[0].split()[3] == "ACCEPTED" and lines[0].endswith(" done")
    last = lines[-1].split()
    # 2026-01-02 12:00:00.123Z wf-... COMPLETED +85 ms output {"v":7}
    assert last[2:4] == [workflow_id, "COMPLETED"] and last[0].count("-") == 2
    assert last[4].startswith("+") and last[5] in ("ms", "s")
    assert lines[-1].endswith('output {"v":7}')
    assert all(line.split()[2] == workflow_id for line in lines)

    as_json = fleet.cli("tail", "--workflow", workflow_id, "--json", timeout=TAIL_S)
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout.splitlines()[-1].startswith("{") and '"COMPLETED"' in as_json.stdout


def test_tail_of_a_failed_workflow_says_why(fleet: Fleet) -> None:
    spec = {"name": "broken", "steps": [_noop("a", {"fail": "permanent"})]}
    workflow_id = fleet.finished(spec)
    tail = fleet.cli("tail", "--workflow", workflow_id, timeout=TAIL_S)
    assert tail.returncode == 0, tail.stderr
    last = tail.stdout.splitlines()[-1]
    assert " FAILED " in last and "cause " in last and "at step a" in last


def test_tail_of_a_running_workflow_ends_when_it_does(fleet: Fleet) -> None:
    spec = {"name": "slow", "steps": [_noop("slow", {"delay_ms": 3000})]}
    workflow_id = fleet.client.submit(spec)
    tail = fleet.popen("tail", "--workflow", workflow_id)
    try:
        out, err = tail.communicate(timeout=WAIT_S)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0, err
    kinds = [line.split()[3] for line in out.splitlines()]
    assert kinds[0] == "ACCEPTED" and kinds[-1] == "COMPLETED"
    assert f"{workflow_id}: no terminal event yet; following" in err


def test_tail_of_an_unknown_workflow_says_so_and_keeps_waiting(fleet: Fleet) -> None:
    tail = fleet.popen("tail", "--workflow", f"wf-{uuid.uuid4().hex}")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            tail.communicate(timeout=15)
    finally:
        tail.kill()
        _out, err = tail.communicate(timeout=10)
    assert "no event yet (a wrong id, or not accepted yet); following" in err


def test_tail_of_every_workflow_since_a_time_prints_past_events(fleet: Fleet) -> None:
    workflow_id = fleet.finished({"name": "past", "steps": [_noop("a", {})]})
    tail = fleet.popen("tail", "--since", "10m", "--json")
    try:
        assert tail.stdout is not None
        deadline = time.monotonic() + TAIL_S
        for line in tail.stdout:  # follows for good: read until the workflow's end shows
            if workflow_id in line and '"COMPLETED"' in line:
                break
            assert time.monotonic() < deadline, "the finished workflow's events never came"
        else:
            pytest.fail(f"tail ended early: {tail.stderr.read() if tail.stderr else ''}")
    finally:
        tail.kill()
        tail.communicate(timeout=10)


def test_top_up_of_an_ended_or_unknown_workflow_is_refused(fleet: Fleet) -> None:
    workflow_id = fleet.finished({"name": "over", "steps": [_noop("a", {})]})
    ended = fleet.cli("budget", "top-up", workflow_id, "1")
    assert ended.returncode == 1
    assert ended.stdout == ""
    assert f"{workflow_id} has ended (COMPLETED at " in ended.stderr
    assert "nothing sent" in ended.stderr

    unknown = fleet.cli("budget", "top-up", "wf-nobody-knows", "1")
    assert unknown.returncode == 1
    assert "unknown workflow wf-nobody-knows" in unknown.stderr and unknown.stdout == ""


def test_status_of_a_running_an_ended_and_an_unknown_workflow(fleet: Fleet) -> None:
    spec = {"name": "slow", "steps": [_noop("a", {}), _noop("b", {"delay_ms": 20_000}, ["a"])]}
    workflow_id = fleet.client.submit(spec)
    deadline = time.monotonic() + WAIT_S
    while (
        "steps running (1): b (attempt 1)" not in (now := fleet.cli("status", workflow_id)).stdout
    ):
        assert time.monotonic() < deadline, now.stdout + now.stderr
        time.sleep(0.5)
    assert now.returncode == 0
    assert now.stdout.startswith(f"{workflow_id}  RUNNING  slow  submitted ")
    assert "steps completed (1): a" in now.stdout
    as_json = json.loads(fleet.cli("status", workflow_id, "--json").stdout)
    assert (as_json["state"], as_json["steps_completed"]) == ("RUNNING", ["a"])
    assert as_json["steps_running"][0]["step"] == "b"

    fleet.client.cancel(workflow_id, reason="seen enough")
    deadline = time.monotonic() + WAIT_S
    while (ended := fleet.cli("status", workflow_id)).stdout.split()[1] != "CANCELLED":
        assert time.monotonic() < deadline, ended.stdout
        time.sleep(0.5)
    assert "steps running" not in ended.stdout and "seen enough" in ended.stdout

    unknown = fleet.cli("status", "wf-nobody-knows")
    assert unknown.returncode == 1
    assert "unknown: no event or submission of it on the topics" in unknown.stdout


def test_top_up_of_a_running_workflow_is_sent(fleet: Fleet) -> None:
    workflow_id = fleet.client.submit({"name": "long", "steps": [_noop("a", {"delay_ms": 5000})]})
    deadline = time.monotonic() + 30
    while not fleet.client.workflow_log().look_up(workflow_id, 10).known:
        assert time.monotonic() < deadline, "never accepted"
        time.sleep(0.2)
    done = fleet.cli("budget", "top-up", workflow_id, "0.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("tu-")


def test_submit_wait_prints_the_outcome_and_a_capability_nobody_serves_says_why(
    fleet: Fleet, tmp_path: Path
) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text(
        "name: one\nsteps: [{id: a, capability: noop, input: {v: 3}}]\noutput: $.steps.a.output\n"
    )
    done = fleet.cli("submit", str(spec), "--wait", "--timeout", str(WAIT_S))
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert (outcome["kind"], outcome["output"]) == ("COMPLETED", {"v": 3})

    spec.write_text("name: two\nsteps: [{id: a, capability: nobody-serves-this, input: {}}]\n")
    refused = fleet.cli("submit", str(spec))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "capability 'nobody-serves-this' has no task topic" in refused.stderr
    assert "created by the first `fleet worker` that registers it" in refused.stderr
    # --wait waits for the topic (a worker just started creates it), then refuses.
    waited = fleet.cli("submit", str(spec), "--wait", "--timeout", "2")
    assert waited.returncode == 2 and waited.stdout == ""
    assert waited.stderr.startswith(
        "fleet: waiting for a worker to create the task topics of: nobody-serves-this\n"
    )
    assert "invalid workflow" in waited.stderr


@pytest.mark.timeout(300)
def test_kafka_start_keeps_the_data_and_start_fresh_wipes_it(tmp_path: Path) -> None:
    """The local broker's commands as a developer uses them, in a run dir of their own."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env |= {"FLEET_KAFKA_HOME": str(tmp_path / "kafka"), "FLEET_TOPIC_PREFIX": "cli-local."}

    def fleet(*args: str) -> subprocess.CompletedProcess[str]:
        return run_fleet(env, *args, timeout=180)

    try:
        first = fleet("kafka", "start")
        assert first.returncode == 0, first.stderr
        assert "created" in fleet("topics", "apply").stdout
        running = fleet("kafka", "status")
        assert running.returncode == 0 and "data in " in running.stdout
        assert fleet("kafka", "stop").stdout.strip() == "stopped"
        stopped = fleet("kafka", "status")
        assert stopped.returncode == 1
        assert stopped.stdout.startswith("not running\ndata kept in ")
        again = fleet("kafka", "start")
        assert again.returncode == 0, again.stderr
        assert again.stdout == first.stdout  # the same address
        resumed = fleet("topics", "apply")
        assert resumed.returncode == 0 and "created" not in resumed.stdout  # still there
        fresh = fleet("kafka", "start", "--fresh")
        assert fresh.returncode == 0, fresh.stderr
        assert "created" in fleet("topics", "apply").stdout  # wiped
    finally:
        fleet("kafka", "stop")
