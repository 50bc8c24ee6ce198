"""Cancellation on a real broker: a cancel stops the work, not only the workflow.

One orchestrator and one worker (``tests.apps:app``, concurrency 1, so a handler that
kept its slot would hold up the next task) as child processes. The handlers record what
they see in a marker file: the evidence comes from the handler's side. Each would run
120 s if nothing stopped it; every wait here is bounded well under that.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.codec import Codec
from fleet.kafka import KafkaClients, headers_for, partitions_of, records_to_end
from fleet.kafka.client import FleetClient
from fleet.messages import EventKind, TaskAssigned, TaskCancelled, TaskResult, WorkflowEvent
from fleet.settings import Settings
from fleetctl.supervisor import Child, Supervisor, child_env
from tests.integration.test_worker import free_port, scrape, start_worker

pytestmark = pytest.mark.kafka

WAIT_S = 30.0  # for what takes a second or two; the handlers would run 120 s


@dataclass
class Fleet:
    settings: Settings
    client: FleetClient
    worker: Child
    metrics_url: str

    @property
    def codec(self) -> Codec:
        return self.client.codec

    def run(self, spec: dict[str, Any], timeout_s: float = WAIT_S) -> WorkflowEvent:
        consumer = self.client.event_consumer(from_beginning=False)
        try:
            workflow_id = self.client.submit(spec)
            outcomes = self.client.wait(consumer, [workflow_id], timeout_s)
        finally:
            consumer.close()
        assert workflow_id in outcomes, f"no terminal event for {workflow_id} in {timeout_s} s"
        return outcomes[workflow_id]

    def records(self, topic: str) -> list[Any]:
        clients = self.client.clients
        deadline = time.monotonic() + WAIT_S
        return list(records_to_end(clients, topic, partitions_of(clients, topic), deadline))

    def cancellations(self, workflow_id: str) -> list[TaskCancelled]:
        found = [
            self.codec.decode(r.value(), TaskCancelled)
            for r in self.records(self.client.topics.cancellations)
        ]
        return [c for c in found if c.workflow_id == workflow_id]

    def results_of(self, workflow_id: str) -> list[TaskResult]:
        found = [
            self.codec.decode(r.value(), TaskResult)
            for r in self.records(self.client.topics.results)
        ]
        return [r for r in found if r.workflow_id == workflow_id]

    def cancelled_count(self, capability: str, when: str) -> float:
        key = (
            "fleet_worker_tasks_cancelled_total",
            tuple(sorted({"capability": capability, "when": when}.items())),
        )
        return scrape(self.metrics_url).get(key, 0.0)


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FLEET_TOPIC_PREFIX": f"cx-{uuid.uuid4().hex[:8]}.",
        }
    )
    applied = subprocess.run(
        [sys.executable, "-m", "fleetctl.cli", "topics", "apply"],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    port = free_port()
    with Supervisor(settings, tmp_path_factory.mktemp("cancel-logs")) as supervisor:
        orchestrator = supervisor.start("orchestrator", ["orchestrator"])
        worker = start_worker(supervisor, "worker", concurrency=1, metrics_port=port)
        client = FleetClient(settings, role="test")
        yield Fleet(settings, client, worker, f"http://127.0.0.1:{port}/metrics")
        client.close()
        codes = supervisor.stop_all(grace_s=30)
        assert codes == {"orchestrator": 0, "worker": 0}, (
            orchestrator.log_tail(),
            worker.log_tail(),
        )


def lines(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def wait_for(marker: Path, line: str, timeout_s: float = WAIT_S) -> float:
    """Seconds until ``line`` is in the marker file; fails after ``timeout_s``."""
    started = time.monotonic()
    while line not in lines(marker):
        assert time.monotonic() - started < timeout_s, f"{line!r} not seen: {lines(marker)}"
        time.sleep(0.05)
    return time.monotonic() - started


def eventually(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.2)


def one_step(capability: str, payload: dict[str, Any], **step: Any) -> dict[str, Any]:
    return {
        "name": f"cancel-{capability}",
        "steps": [{"id": "agent", "capability": capability, "input": payload, **step}],
        "output": "$.steps.agent.output",
    }


def assert_the_worker_goes_on(fleet: Fleet) -> None:
    """Concurrency 1: the next task runs only once the cancelled one gave its slot back."""
    started = time.monotonic()
    done = fleet.run(one_step("t.echo", {"next": True}))
    assert done.kind is EventKind.COMPLETED, done
    assert time.monotonic() - started < 20


def test_a_cancelled_workflows_async_handler_is_cancelled(fleet: Fleet, tmp_path: Path) -> None:
    marker = tmp_path / "async.log"
    before = fleet.cancelled_count("t.cancel-async", "running")
    consumer = fleet.client.event_consumer(from_beginning=False)
    workflow_id = fleet.client.submit(one_step("t.cancel-async", {"marker": str(marker)}))
    wait_for(marker, "attempt 1 started")
    fleet.client.cancel(workflow_id, reason="stop spending")
    took = wait_for(marker, "attempt 1 CancelledError", timeout_s=15)
    outcome = fleet.client.wait(consumer, [workflow_id], WAIT_S)[workflow_id]
    consumer.close()
    assert outcome.kind is EventKind.CANCELLED
    assert took < 15  # the handler would have slept 120 s
    assert lines(marker) == ["attempt 1 started", "attempt 1 CancelledError"]

    [cancelled] = fleet.cancellations(workflow_id)
    assert (cancelled.task_id, cancelled.attempt) == (f"{workflow_id}/agent/0", 1)
    assert (cancelled.reason, cancelled.detail) == ("workflow_cancelled", "stop spending")
    assert cancelled.capability == "t.cancel-async"
    eventually(
        lambda: fleet.cancelled_count("t.cancel-async", "running") == before + 1,
        "the worker counts the cancellation",
    )
    assert fleet.results_of(workflow_id) == []  # nothing produced for the cancelled attempt
    assert_the_worker_goes_on(fleet)


def test_a_sync_handler_sees_ctx_cancelled_and_returns_early(fleet: Fleet, tmp_path: Path) -> None:
    marker = tmp_path / "sync.log"
    workflow_id = fleet.client.submit(one_step("t.cancel-sync", {"marker": str(marker)}))
    wait_for(marker, "attempt 1 started")
    fleet.client.cancel(workflow_id, reason="changed my mind")
    assert wait_for(marker, "attempt 1 saw ctx.cancelled", timeout_s=15) < 15
    assert "attempt 1 completed" not in lines(marker)
    assert_the_worker_goes_on(fleet)
    assert fleet.results_of(workflow_id) == []


def test_a_timed_out_attempt_is_cancelled_on_the_worker_and_its_retry_runs(
    fleet: Fleet, tmp_path: Path
) -> None:
    marker = tmp_path / "timeout.log"
    spec = one_step(
        "t.cancel-async",
        {"marker": str(marker), "hang_attempts": 1},
        timeout_s=2,
        retries=1,
        backoff_s=0,
    )
    started = time.monotonic()
    outcome = fleet.run(spec)
    assert outcome.kind is EventKind.COMPLETED, outcome
    assert outcome.output == {"attempt": 2}
    assert time.monotonic() - started < 20
    assert lines(marker) == [
        "attempt 1 started",
        "attempt 1 CancelledError",
        "attempt 2 started",
        "attempt 2 completed",
    ]
    # The orchestrator cancelled attempt 1 when it timed out, unless the worker's own
    # deadline (the same instant) stopped the handler and its TimeoutError result reached
    # the orchestrator first: then the attempt had ended and there is nothing to cancel.
    # The task without a deadline below is stopped by the topic alone.
    cancelled = [(c.attempt, c.reason) for c in fleet.cancellations(outcome.workflow_id)]
    assert cancelled in ([(1, "timed_out")], [])


def test_a_cancellation_from_the_topic_stops_a_task_without_deadline(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Only the cancellations topic can stop this one: it has no deadline of its own."""
    marker = tmp_path / "topic.log"
    task = assigned("t.cancel-async", {"marker": str(marker)})
    produce(fleet, fleet.client.topics.tasks(task.capability), task, task.task_id)
    wait_for(marker, "attempt 1 started")
    produce(fleet, fleet.client.topics.cancellations, cancellation_of(task), task.workflow_id)
    assert wait_for(marker, "attempt 1 CancelledError", timeout_s=15) < 15
    assert_the_worker_goes_on(fleet)
    assert fleet.results_of(task.workflow_id) == []


def test_a_task_cancelled_while_queued_never_starts(fleet: Fleet, tmp_path: Path) -> None:
    """Cancelled while it waits behind a running task (concurrency 1): never started, and
    the task after it runs."""
    before = fleet.cancelled_count("t.cancel-async", "before_start")
    blocker_marker, queued_marker = tmp_path / "blocker.log", tmp_path / "queued.log"
    blocker = assigned("t.cancel-async", {"marker": str(blocker_marker)})
    queued = assigned("t.cancel-async", {"marker": str(queued_marker)})
    produce(fleet, fleet.client.topics.tasks(blocker.capability), blocker, blocker.task_id)
    wait_for(blocker_marker, "attempt 1 started")
    produce(fleet, fleet.client.topics.tasks(queued.capability), queued, queued.task_id)
    produce(fleet, fleet.client.topics.cancellations, cancellation_of(queued), queued.workflow_id)
    time.sleep(1.0)  # the worker reads the cancellation while the blocker still runs
    produce(fleet, fleet.client.topics.cancellations, cancellation_of(blocker), blocker.workflow_id)
    wait_for(blocker_marker, "attempt 1 CancelledError", timeout_s=15)
    eventually(
        lambda: fleet.cancelled_count("t.cancel-async", "before_start") == before + 1,
        "the queued task counted as cancelled before its start",
    )
    assert lines(queued_marker) == []
    assert_the_worker_goes_on(fleet)


def assigned(capability: str, payload: dict[str, Any]) -> TaskAssigned:
    """A task as the orchestrator would send it, for a workflow it does not know (its
    result, if any, is dropped), and without a deadline."""
    workflow_id = f"wf-direct-{uuid.uuid4().hex[:8]}"
    return TaskAssigned(
        task_id=f"{workflow_id}/agent/0",
        workflow_id=workflow_id,
        step_id="agent",
        capability=capability,
        attempt=1,
        input=payload,
        dispatched_at_ms=int(time.time() * 1000),
    )


def cancellation_of(task: TaskAssigned) -> TaskCancelled:
    return TaskCancelled(
        task_id=task.task_id,
        workflow_id=task.workflow_id,
        capability=task.capability,
        attempt=task.attempt,
        reason="timed_out",
        detail="played by the test",
        at_ms=int(time.time() * 1000),
    )


def produce(fleet: Fleet, topic: str, message: TaskAssigned | TaskCancelled, key: str) -> None:
    settings = fleet.settings
    assert settings.bootstrap_servers
    producer = KafkaClients(settings, settings.bootstrap_servers, role="test").producer()
    producer.produce(
        topic, fleet.codec.encode(message), key=key, headers=headers_for(message, None)
    )
    assert producer.flush(10) == 0
