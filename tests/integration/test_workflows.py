"""End to end on a real broker: orchestrator and worker pools run as separate processes."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from fleet.kafka.client import FleetClient
from fleet.messages import DeadLetter, EventKind, UsageLine, WorkflowEvent
from fleet.money import credits_to_micro
from fleet.settings import Settings
from fleet.usage import describe
from fleetctl.supervisor import Supervisor, child_env
from tests.fleet_cli import free_port, run_fleet
from workers.examples import SUMMARY_MODEL, bill

pytestmark = pytest.mark.kafka

WAIT_S = 90.0


@dataclass
class Fleet:
    settings: Settings
    client: FleetClient
    supervisor: Supervisor
    metrics_port: int

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The orchestrator's Prometheus samples, by name and labels."""
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
                ) as response:
                    text = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def run(self, spec: dict[str, object], workflow_id: str | None = None) -> WorkflowEvent:
        return self.run_many([spec])[0]

    def run_many(self, specs: list[dict[str, object]]) -> list[WorkflowEvent]:
        consumer = self.client.event_consumer(from_beginning=False)
        try:
            ids = [self.client.submit(spec, flush=False) for spec in specs]
            self.client.flush()
            outcomes = self.client.wait(consumer, ids, WAIT_S)
        finally:
            consumer.close()
        dead = [c.name for c in self.supervisor.dead()]
        assert not dead, f"processes died: {dead}"
        missing = [i for i in ids if i not in outcomes]
        assert not missing, f"no terminal event for {missing}"
        return [outcomes[i] for i in ids]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_fleet(child_env(self.settings), *args, timeout=timeout)


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FLEET_TOPIC_PREFIX": f"it-{uuid.uuid4().hex[:8]}.",
        }
    )
    log_dir = tmp_path_factory.mktemp("fleet-logs")
    applied = run_fleet(child_env(settings), "topics", "apply")
    assert applied.returncode == 0, applied.stderr
    assert "created" in applied.stdout
    metrics_port = free_port()
    with Supervisor(settings, log_dir) as supervisor:
        supervisor.start("orchestrator", ["orchestrator", "--metrics-port", str(metrics_port)])
        for n in (1, 2):
            supervisor.start(
                f"worker-{n}", ["worker", "--app", "workers.examples:app", "--concurrency", "8"]
            )
        client = FleetClient(settings, role="test")
        yield Fleet(settings, client, supervisor, metrics_port)
        client.close()
        codes = supervisor.stop_all()
        logs = {c.name: c.log_tail() for c in supervisor.children}
        assert codes == {"orchestrator": 0, "worker-1": 0, "worker-2": 0}, logs


def noop(
    step_id: str, payload: object, needs: list[str] | None = None, **extra: object
) -> dict[str, object]:
    return {"id": step_id, "capability": "noop", "input": payload, "needs": needs or [], **extra}


def test_linear_workflow_passes_outputs_along(fleet: Fleet) -> None:
    spec = {
        "name": "linear",
        "input": {"x": 7},
        "steps": [
            noop("a", {"v": "$.input.x"}),
            noop("b", {"prev": "$.steps.a.output", "n": 2}, ["a"]),
            noop("c", {"all": "$.steps.b.output"}, ["b"]),
        ],
        "output": "$.steps.c.output",
    }
    outcome = fleet.run(spec)
    assert outcome.kind is EventKind.COMPLETED, outcome.error
    assert outcome.output == {"all": {"prev": {"v": 7}, "n": 2}}


def test_diamond_joins_both_branches(fleet: Fleet) -> None:
    spec = {
        "name": "diamond",
        "steps": [
            noop("a", {"root": True}),
            noop("b", {"left": "$.steps.a.output.root"}, ["a"]),
            noop("c", {"right": "$.steps.a.output"}, ["a"]),
            noop("d", {"b": "$.steps.b.output", "c": "$.steps.c.output"}, ["b", "c"]),
        ],
        "output": {"joined": "$.steps.d.output", "first": "$.steps.a.output"},
    }
    outcome = fleet.run(spec)
    assert outcome.kind is EventKind.COMPLETED, outcome.error
    assert outcome.output == {
        "joined": {"b": {"left": True}, "c": {"right": {"root": True}}},
        "first": {"root": True},
    }


def test_fan_out_of_fifty_fans_in_in_element_order(fleet: Fleet) -> None:
    # Later elements sleep less, so results arrive roughly in reverse order.
    items = [{"i": i, "d": (50 - i) * 4} for i in range(50)]
    spec = {
        "name": "fan",
        "steps": [
            noop("source", {"items": items}),
            noop(
                "each",
                {"i": "$.item.i", "pos": "$.index", "delay_ms": "$.item.d"},
                ["source"],
                for_each="$.steps.source.output.items",
            ),
            noop("sink", {"all": "$.steps.each.output"}, ["each"]),
        ],
        "output": "$.steps.sink.output.all",
    }
    outcome = fleet.run(spec)
    assert outcome.kind is EventKind.COMPLETED, outcome.error
    assert outcome.output == [{"i": i, "pos": i, "delay_ms": (50 - i) * 4} for i in range(50)]


def test_retryable_failure_is_retried_then_succeeds(fleet: Fleet) -> None:
    spec = {
        "name": "flaky",
        "steps": [{"id": "f", "capability": "text.flaky", "input": {}, "retries": 2}],
        "output": "$.steps.f.output",
    }
    outcome = fleet.run(spec)
    assert outcome.kind is EventKind.COMPLETED, outcome.error
    assert outcome.output == {"ok": True}


def test_every_dispatched_attempt_is_on_the_events_topic_as_step_started(fleet: Fleet) -> None:
    """A consumer of workflow.events follows a step attempt by attempt: STEP_STARTED for
    each dispatch (retries too), then STEP_COMPLETED naming the attempt and its worker."""
    spec = {
        "name": "progress",
        "steps": [
            {"id": "f", "capability": "text.flaky", "input": {}, "retries": 2},
            noop("each", {"x": "$.item"}, ["f"], for_each="$.input.items"),
        ],
        "input": {"items": [1, 2, 3]},
    }
    consumer = fleet.client.event_consumer(from_beginning=False)
    try:
        workflow_id = fleet.client.submit(spec)
        ended = lambda e: e.workflow_id == workflow_id and e.kind.terminal  # noqa: E731
        events = [
            e
            for e in fleet.client.events(consumer, until=ended, timeout_s=WAIT_S)
            if e.workflow_id == workflow_id
        ]
    finally:
        consumer.close()
    assert events[-1].kind is EventKind.COMPLETED, events[-1].error
    started = [
        (e.step_id, e.task_id, e.attempt, e.index)
        for e in events
        if e.kind is EventKind.STEP_STARTED
    ]
    assert started == [
        ("f", f"{workflow_id}/f/0", 1, None),
        ("f", f"{workflow_id}/f/0", 2, None),  # the retry after the first attempt failed
        *(("each", f"{workflow_id}/each/{i}", 1, i) for i in range(3)),
    ]
    [f_done] = [e for e in events if e.kind is EventKind.STEP_COMPLETED and e.step_id == "f"]
    assert (f_done.task_id, f_done.attempt) == (f"{workflow_id}/f/0", 2)
    assert f_done.worker_id  # the worker whose result completed it
    first_start = next(e for e in events if e.kind is EventKind.STEP_STARTED)
    assert events[0].kind is EventKind.ACCEPTED and first_start.at_ms <= f_done.at_ms


def test_retryable_failure_without_retries_fails_with_cause(fleet: Fleet) -> None:
    spec = {"name": "flaky0", "steps": [{"id": "f", "capability": "text.flaky", "input": {}}]}
    outcome = fleet.run(spec)
    assert outcome.kind is EventKind.FAILED
    assert outcome.error is not None
    assert (outcome.error.step_id, outcome.error.attempt, outcome.error.type) == (
        "f",
        1,
        "RetryableError",
    )
    assert outcome.error.message.endswith(
        "attempt 1 failed, retries exhausted (0 allowed): try again"
    )


def test_permanent_failure_fails_at_once_despite_retries(fleet: Fleet) -> None:
    spec = {
        "name": "perm",
        "steps": [noop("ok", {}), noop("bad", {"fail": "permanent"}, ["ok"], retries=3)],
    }
    outcome = fleet.run(spec)
    assert outcome.kind is EventKind.FAILED
    assert outcome.error is not None
    assert (outcome.error.step_id, outcome.error.attempt, outcome.error.type) == (
        "bad",
        1,
        "PermanentError",
    )


@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        ([noop("a", {}, ["b"]), noop("b", {}, ["a"])], "cycle"),
        ([noop("a", {}, ["ghost"])], "ghost"),
        ([{"id": "a", "capability": "no-such-capability", "input": {}}], "has no task topic"),
        ([noop("a", {}), noop("b", {"x": "$.steps.a.output"})], "not in needs"),
    ],
)
def test_invalid_workflow_is_rejected_with_reason(
    fleet: Fleet, steps: list[dict[str, object]], reason: str
) -> None:
    outcome = fleet.run({"name": "bad", "steps": steps})
    assert outcome.kind is EventKind.REJECTED
    assert outcome.error is not None and reason in outcome.error.message


def test_for_each_that_is_not_a_list_fails_the_workflow(fleet: Fleet) -> None:
    spec = {
        "name": "notalist",
        "steps": [
            noop("a", {"items": {"not": "a list"}}),
            noop("b", {"x": "$.item"}, ["a"], for_each="$.steps.a.output.items"),
        ],
    }
    outcome = fleet.run(spec)
    assert outcome.kind is EventKind.FAILED
    assert outcome.error is not None and outcome.error.step_id == "b"
    assert outcome.error.type == "ResolutionError"


def _dead_letters(fleet: Fleet, expected: int) -> list[tuple[DeadLetter, dict[str, str]]]:
    topic = fleet.client.topics.dead_letters
    consumer: Consumer = fleet.client.clients.consumer(f"dlq-reader-{uuid.uuid4().hex}")
    partitions = fleet.client.admin.list_topics(topic=topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    found: list[tuple[DeadLetter, dict[str, str]]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(found) < expected:
        for record in consumer.consume(100, timeout=0.5):
            if record.error() is None:
                headers = {k: bytes(v).decode() for k, v in record.headers() or [] if v is not None}
                found.append((fleet.client.codec.decode(record.value(), DeadLetter), headers))
    consumer.close()
    return found


def test_garbage_on_every_consumed_topic_is_dead_lettered_and_the_line_goes_on(
    fleet: Fleet,
) -> None:
    topics = fleet.client.topics
    poisoned = [topics.requests, topics.results, topics.tasks("noop")]
    producer = fleet.client.clients.producer()
    for topic in poisoned:
        producer.produce(topic, key=b"garbage-key", value=b"\x00garbage " + topic.encode())
    assert producer.flush(10) == 0

    outcome = fleet.run({"name": "after-garbage", "steps": [noop("a", {"still": "alive"})]})
    assert outcome.kind is EventKind.COMPLETED

    letters = _dead_letters(fleet, expected=len(poisoned))
    by_topic = {letter.source_topic: (letter, headers) for letter, headers in letters}
    assert sorted(by_topic) == sorted(poisoned)
    for topic, (letter, headers) in by_topic.items():
        assert letter.value == b"\x00garbage " + topic.encode()
        assert letter.key == b"garbage-key"
        assert letter.error_type == "DecodeError"
        assert headers["fleet-error-type"] == "DecodeError"
        assert headers["fleet-source-topic"] == topic
        assert headers["fleet-error"]


def test_cli_submit_wait_prints_the_terminal_event(fleet: Fleet, tmp_path: Path) -> None:
    spec_file = tmp_path / "wf.yaml"
    spec_file.write_text(
        "name: cli\nsteps:\n  - id: a\n    capability: noop\n    input: {v: $.input.v}\n"
        "output: $.steps.a.output\n"
    )
    done = fleet.cli("submit", str(spec_file), "--input", '{"v": 42}', "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout)
    assert event["kind"] == "COMPLETED"
    assert event["output"] == {"v": 42}

    tail = fleet.cli("tail", "--workflow", event["workflow_id"], "--from-beginning", "--json")
    assert tail.returncode == 0, tail.stderr
    kinds = [json.loads(line)["kind"] for line in tail.stdout.splitlines()]
    assert kinds == ["ACCEPTED", "STEP_STARTED", "STEP_COMPLETED", "COMPLETED"]


def test_cli_rejects_an_invalid_file_before_producing(fleet: Fleet, tmp_path: Path) -> None:
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text("name: bad\nsteps:\n  - id: a\n    capability: noop\n    needs: [a]\n")
    done = fleet.cli("submit", str(spec_file))
    assert done.returncode == 2
    assert done.stdout == ""
    assert "invalid workflow" in done.stderr and "cycle" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_orchestrator_metrics_count_exactly_what_ran(fleet: Fleet) -> None:
    noop_ = (("capability", "noop"),)
    before = fleet.metrics()
    spec = {
        "name": "metered",
        "steps": [noop("a", {}), noop("b", {}, ["a"]), noop("c", {"fail": "permanent"}, ["b"])],
    }
    assert fleet.run(spec).kind is EventKind.FAILED
    after = fleet.metrics()

    def delta(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert delta("fleet_tasks_dispatched_total", noop_) == 3
    assert delta("fleet_tasks_completed_total", noop_) == 2
    assert delta("fleet_tasks_failed_total", noop_) == 1
    assert delta("fleet_task_latency_seconds_count", noop_) == 3
    assert delta("fleet_workflow_latency_seconds_count", (("outcome", "failed"),)) == 1
    assert after[("fleet_tasks_in_flight", ())] == 0
    assert after[("fleet_workflows_active", ())] == 0


def test_usage_reported_by_handlers_is_summed_per_workflow_and_metered(fleet: Fleet) -> None:
    """The example summarize bills each call (ctx.report_usage): three calls, a fan-out of
    two and a fan-in, arrive on the terminal event summed exactly, in the status and tail
    lines, and in the orchestrator's cost and token metrics by capability, version and
    tenant."""
    texts = ["Disk full on web-1. Paging.", "Latency up on db-2! Check the replicas now."]
    spec = {
        "name": "billed",
        "input": {"texts": texts},
        "steps": [
            {
                "id": "each",
                "capability": "summarize",
                "for_each": "$.input.texts",
                "input": {"text": "$.item"},
            },
            {
                "id": "all",
                "capability": "summarize",
                "needs": ["each"],
                "input": {"findings": "$.steps.each.output"},
            },
        ],
        "output": "$.steps.all.output",
    }
    labels = (("capability", "summarize"), ("tenant", "default"), ("version", "1.1.0"))
    before = fleet.metrics()
    outcome = fleet.run(spec)
    assert outcome.kind is EventKind.COMPLETED, outcome.error
    # What each call billed, from its own input and output (from the run's events).
    history = fleet.client.workflow_log().history(outcome.workflow_id, timeout_s=30)
    [each] = [
        e.output
        for e in history.events
        if e.kind is EventKind.STEP_COMPLETED and e.step_id == "each"
    ]
    assert isinstance(each, list) and len(each) == 2
    calls = [({"text": t}, e) for t, e in zip(texts, each, strict=True)]
    calls.append(({"findings": each}, outcome.output))
    bills = [bill(payload, output) for payload, output in calls]
    expected = UsageLine(
        model=SUMMARY_MODEL,
        tokens_in=sum(b["tokens_in"] for b in bills),
        tokens_out=sum(b["tokens_out"] for b in bills),
        cost=sum(credits_to_micro(b["cost"]) for b in bills),
    )
    assert outcome.usage == [expected]

    after = fleet.metrics()

    def delta(name: str, more: tuple[tuple[str, str], ...] = ()) -> float:
        key = (name, tuple(sorted(labels + more)))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("fleet_task_cost_credits_count") == 3
    assert delta("fleet_task_cost_credits_sum") == pytest.approx(expected.cost / 1_000_000)
    assert delta("fleet_task_tokens_total", (("direction", "in"),)) == expected.tokens_in
    assert delta("fleet_task_tokens_total", (("direction", "out"),)) == expected.tokens_out

    shown = fleet.cli("status", outcome.workflow_id)
    assert shown.returncode == 0, shown.stderr
    assert f"usage: {describe(outcome.usage)}" in shown.stdout
    assert f"({SUMMARY_MODEL})" in shown.stdout


def test_cancel_ends_a_running_workflow_once_and_dispatches_nothing_after(fleet: Fleet) -> None:
    spec = {
        "name": "to-cancel",
        "steps": [noop("slow", {"delay_ms": 4000}), noop("never", {}, ["slow"])],
    }
    consumer = fleet.client.event_consumer(from_beginning=False)
    workflow_id = fleet.client.submit(spec)
    time.sleep(1.0)  # the slow step is running on a worker
    done = fleet.cli("cancel", workflow_id, "--reason", "operator said so", "--wait")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["kind"] == "CANCELLED"
    assert outcome["error"]["message"] == "operator said so"

    # The slow step's result arrives after the cancel: it must not start `never`.
    time.sleep(4.5)
    events = [e for e in fleet.client.events(consumer, timeout_s=2) if e.workflow_id == workflow_id]
    consumer.close()
    assert [e.kind for e in events if e.kind.terminal] == [EventKind.CANCELLED]
    assert all(e.step_id != "slow" for e in events if e.kind is EventKind.STEP_COMPLETED)
    tasks = fleet.client.topics.tasks("noop")
    reader = fleet.client.clients.consumer(f"cancel-check-{uuid.uuid4().hex}")
    parts = fleet.client.admin.list_topics(topic=tasks, timeout=10).topics[tasks].partitions
    reader.assign([TopicPartition(tasks, p, 0) for p in parts])
    dispatched = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = reader.consume(500, timeout=0.5)
        if not records:
            break
        dispatched += [
            r.key()
            for r in records
            if r.error() is None and r.key().startswith(workflow_id.encode())
        ]
    reader.close()
    assert dispatched == [f"{workflow_id}/slow/0".encode()]


def test_a_cancel_that_overtakes_its_submission_ends_it_cancelled(fleet: Fleet) -> None:
    workflow_id = f"wf-early-{uuid.uuid4().hex[:8]}"
    fleet.client.cancel(workflow_id, reason="changed my mind")  # before any submission
    consumer = fleet.client.event_consumer(from_beginning=False)
    fleet.client.submit({"name": "late", "steps": [noop("a", {})]}, workflow_id)
    ended = lambda e: e.workflow_id == workflow_id and e.kind.terminal  # noqa: E731
    seen = list(fleet.client.events(consumer, until=ended, timeout_s=30))
    seen += fleet.client.events(consumer, timeout_s=2)  # nothing may follow it
    events = [e for e in seen if e.workflow_id == workflow_id]
    consumer.close()
    assert [e.kind for e in events] == [EventKind.CANCELLED]
    assert events[0].error is not None
    assert events[0].error.message == "cancelled before it was submitted"
