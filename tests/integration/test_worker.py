"""The worker runtime as a real process on a real broker: results, concurrency, poison,
failures, timeouts, back-pressure and a SIGTERM drain.

Each worker is ``fleet worker --app tests.apps:app`` in a child process; the test plays
the orchestrator: it produces TaskAssigned records and reads TaskResult records back.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
from prometheus_client.parser import text_string_to_metric_families

from fleet.codec import Codec, SchemaStore
from fleet.kafka import ATTEMPT, TRACEPARENT, KafkaClients
from fleet.messages import DeadLetter, TaskAssigned, TaskResult, TaskStatus
from fleet.settings import Settings
from fleet.topology import Topics
from fleet.tracing import new_traceparent, trace_id
from fleetctl.supervisor import Child, Supervisor
from tests.fleet_cli import free_port

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0


@dataclass
class Received:
    result: TaskResult
    headers: dict[str, str]


class Harness:
    """Plays the orchestrator's part: produces tasks, reads results and dead letters."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        assert settings.bootstrap_servers
        self.clients = KafkaClients(settings, settings.bootstrap_servers, role="test")
        self.producer: Producer = self.clients.producer()
        self.workflow_id = f"wf-{uuid.uuid4().hex[:8]}"

    def task(
        self, capability: str, payload: Any, n: int = 0, *, deadline_in_s: float | None = None
    ) -> TaskAssigned:
        now = time.time()
        return TaskAssigned(
            task_id=f"{self.workflow_id}/{capability}/{n}",
            workflow_id=self.workflow_id,
            step_id=capability,
            capability=capability,
            attempt=1,
            index=n,
            input=payload,
            deadline_ms=None if deadline_in_s is None else int((now + deadline_in_s) * 1000),
            dispatched_at_ms=int(now * 1000),
        )

    def send(
        self, *tasks: TaskAssigned, partition: int | None = None, traceparent: str | None = None
    ) -> None:
        for task in tasks:
            self.send_raw(
                self.topics.tasks(task.capability),
                self.codec.encode(task),
                key=task.task_id.encode(),
                partition=partition,
                headers=[(TRACEPARENT, traceparent.encode())] if traceparent else [],
            )

    def send_raw(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        extra = {} if partition is None else {"partition": partition}
        self.producer.produce(topic, value=value, key=key, headers=headers or [], **extra)
        assert self.producer.flush(10) == 0

    def reader(self, topic: str) -> Consumer:
        consumer = self.clients.consumer(f"reader-{uuid.uuid4().hex}")
        partitions = self.clients.admin().list_topics(topic=topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions.partitions])
        return consumer

    def results(
        self, expected: int, *, timeout_s: float = WAIT_S, reader: Consumer | None = None
    ) -> dict[str, Received]:
        """This workflow's results by task_id, read until ``expected`` arrived."""
        consumer = reader or self.reader(self.topics.results)
        found: dict[str, Received] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(found) < expected and time.monotonic() < deadline:
                record = consumer.poll(0.2)
                if record is None or record.error() is not None:
                    continue
                result = self.codec.decode(record.value(), TaskResult)
                if result.workflow_id == self.workflow_id:
                    headers = {k: bytes(v).decode() for k, v in record.headers() or [] if v}
                    found[result.task_id] = Received(result, headers)
        finally:
            if reader is None:
                consumer.close()
        assert len(found) >= expected, f"only {len(found)} of {expected} results arrived"
        return found

    def dead_letters(self, expected: int) -> list[tuple[DeadLetter, dict[str, str]]]:
        consumer = self.reader(self.topics.dead_letters)
        found: list[tuple[DeadLetter, dict[str, str]]] = []
        deadline = time.monotonic() + WAIT_S
        try:
            while len(found) < expected and time.monotonic() < deadline:
                record = consumer.poll(0.2)
                if record is not None and record.error() is None:
                    headers = {k: bytes(v).decode() for k, v in record.headers() or [] if v}
                    found.append((self.codec.decode(record.value(), DeadLetter), headers))
        finally:
            consumer.close()
        return found

    def committed(self, capability: str, partition: int) -> int:
        """The worker group's committed offset of one task partition (-1001: none)."""
        consumer = self.clients.consumer(f"{self.settings.topic_prefix}workers.{capability}")
        try:
            tp = TopicPartition(self.topics.tasks(capability), partition)
            return int(consumer.committed([tp], timeout=10)[0].offset)
        finally:
            consumer.close()

    def end_offset(self, capability: str, partition: int) -> int:
        consumer = self.clients.consumer(f"reader-{uuid.uuid4().hex}")
        try:
            tp = TopicPartition(self.topics.tasks(capability), partition)
            return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
        finally:
            consumer.close()

    def close(self) -> None:
        self.producer.flush(10)


def start_worker(
    supervisor: Supervisor,
    name: str,
    concurrency: int = 4,
    grace_s: float = 30,
    *,
    debug: bool = False,
    metrics_port: int | None = None,
) -> Child:
    """``fleet worker --app tests.apps:app`` as a child process, once it consumes."""
    # tests.apps lives in the repository, not in the installed package.
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if debug:
        env["FLEET_LOG_LEVEL"] = "debug"
    args = ["worker", "--app", "tests.apps:app", "--concurrency", str(concurrency)]
    args += ["--grace", str(grace_s)]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    child = supervisor.start(name, args, env=env)
    wait_for_log(child, lambda line: line.get("event") == "worker consuming")
    return child


def log_lines(child: Child) -> list[dict[str, Any]]:
    lines = []
    for raw in child.log_path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue  # librdkafka's own stderr lines
    return lines


def wait_for_log(
    child: Child, match: Callable[[dict[str, Any]], bool], timeout_s: float = WAIT_S
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log_lines(child):
            if match(line):
                return line
        assert child.alive(), f"worker exited ({child.process.returncode}):\n{child.log_tail()}"
        time.sleep(0.1)
    raise AssertionError(f"log line not seen within {timeout_s} s:\n{child.log_tail()}")


@dataclass
class Shared:
    settings: Settings
    child: Child
    metrics_url: str


@pytest.fixture(scope="module")
def shared(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """One worker (concurrency 4) for the tests that do not stop it; each test has its own
    workflow id, so results never mix."""
    env = dict(os.environ)
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    env["FLEET_TOPIC_PREFIX"] = f"tw-{uuid.uuid4().hex[:8]}."
    settings = Settings.from_env(env)
    port = free_port()
    with Supervisor(settings, tmp_path_factory.mktemp("worker-logs")) as supervisor:
        child = start_worker(supervisor, "worker", concurrency=4, debug=True, metrics_port=port)
        yield Shared(settings, child, f"http://127.0.0.1:{port}/metrics")
        codes = supervisor.stop_all(grace_s=30)
        assert codes == {"worker": 0}, child.log_tail()


@pytest.fixture
def harness(shared: Shared) -> Iterator[Harness]:
    h = Harness(shared.settings)
    yield h
    h.close()
    assert shared.child.alive(), shared.child.log_tail()


def test_every_task_gets_its_result_with_the_right_output(harness: Harness) -> None:
    parent = new_traceparent()
    echoes = [harness.task("t.echo", {"n": i, "delay_ms": (i % 5) * 20}, i) for i in range(15)]
    syncs = [harness.task("t.sync-echo", {"n": i}, i) for i in range(15)]
    harness.send(*echoes, *syncs, traceparent=parent)

    got = harness.results(30)
    for task in echoes:
        result = got[task.task_id].result
        assert result.status is TaskStatus.SUCCEEDED, result.error
        assert result.output == {"echo": task.input, "attempt": 1}
    for task in syncs:
        assert got[task.task_id].result.output == {"echo": task.input}
    for received in got.values():
        result = received.result
        assert (result.step_id, result.attempt, result.error) == (result.capability, 1, None)
        assert result.worker_id and result.finished_at_ms >= result.duration_ms
        # The result continues the task's trace in a new span, and carries the attempt.
        assert trace_id(received.headers[TRACEPARENT]) == trace_id(parent)
        assert received.headers[TRACEPARENT] != parent
        assert received.headers[ATTEMPT] == "1"


def test_a_slow_task_does_not_block_the_tasks_behind_it_on_its_partition(
    harness: Harness,
) -> None:
    slow = harness.task("t.echo", {"delay_ms": 5000}, 0)
    fast = [harness.task("t.echo", {"n": i}, i) for i in range(1, 21)]
    start = harness.end_offset("t.echo", 0)
    harness.send(slow, *fast, partition=0)  # all on ONE partition, the slow one first
    early = harness.results(20, timeout_s=30)
    assert slow.task_id not in early
    # While the slow one runs, the committed offset must not pass it.
    committed_while_slow = harness.committed("t.echo", 0)
    done = harness.results(21, timeout_s=30)
    slow_done = done[slow.task_id].result
    assert slow_done.status is TaskStatus.SUCCEEDED and slow_done.duration_ms >= 5000
    fast_finished = [done[t.task_id].result.finished_at_ms for t in fast]
    assert max(fast_finished) < slow_done.finished_at_ms - 3000
    assert committed_while_slow <= start
    # After it finished, everything up to the last fast task is committed (within ~1 s).
    deadline = time.monotonic() + 15
    while harness.committed("t.echo", 0) != start + 21 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert harness.committed("t.echo", 0) == start + 21


def test_garbage_is_dead_lettered_and_the_next_task_still_runs(harness: Harness) -> None:
    topic = harness.topics.tasks("t.echo")
    harness.send_raw(topic, b"\x00\x01not avro at all", key=b"poison", partition=1)
    misrouted = harness.task("t.boom", {"x": 1}, 99)  # valid record, wrong topic
    harness.send_raw(topic, harness.codec.encode(misrouted), key=b"misrouted", partition=1)
    after = harness.task("t.echo", {"still": "alive"}, 1)
    harness.send(after, partition=1)

    assert harness.results(1)[after.task_id].result.output == {
        "echo": {"still": "alive"},
        "attempt": 1,
    }
    letters = {letter.key: (letter, headers) for letter, headers in harness.dead_letters(2)}
    poison, headers = letters[b"poison"]
    assert poison.value == b"\x00\x01not avro at all"
    assert (poison.source_topic, poison.source_partition) == (topic, 1)
    assert poison.error_type == "DecodeError"
    assert headers["fleet-error-type"] == "DecodeError"
    assert "unknown framing" in headers["fleet-error"] or "Confluent" in headers["fleet-error"]
    assert headers["fleet-source-topic"] == topic
    assert headers["fleet-source-offset"] == str(poison.source_offset)
    wrong, headers = letters[b"misrouted"]
    assert "task for 't.boom' on the topic of 't.echo'" in headers["fleet-error"]
    assert wrong.source_offset == poison.source_offset + 1


def test_failing_and_hanging_handlers_fail_their_task_not_the_process(
    harness: Harness, shared: Shared
) -> None:
    boom = harness.task("t.boom", {"n": 1}, 1)
    permanent = harness.task("t.boom", {"permanent": True}, 2)
    hang = harness.task("t.hang", {}, 3, deadline_in_s=1.5)
    hang_sync = harness.task("t.hang-sync", {"sleep_s": 20}, 4, deadline_in_s=1.5)
    harness.send(boom, permanent, hang, hang_sync)

    got = {k: r.result for k, r in harness.results(4).items()}
    errors = {k: r.error for k, r in got.items()}
    assert all(r.status is TaskStatus.FAILED for r in got.values())
    assert errors[boom.task_id] is not None
    assert (errors[boom.task_id].type, errors[boom.task_id].retryable) == ("ValueError", True)
    assert errors[boom.task_id].message == "boom: {'n': 1}"
    assert errors[permanent.task_id] is not None
    assert (errors[permanent.task_id].type, errors[permanent.task_id].retryable) == (
        "PermanentError",
        False,
    )
    for task in (hang, hang_sync):
        error = errors[task.task_id]
        assert error is not None and (error.type, error.retryable) == ("TimeoutError", True)
        assert task.deadline_ms is not None  # stopped waiting at the deadline, not later
        assert task.deadline_ms <= got[task.task_id].finished_at_ms < task.deadline_ms + 2000

    # Still alive and serving, while the abandoned sync thread sleeps on.
    assert shared.child.alive()
    again = harness.task("t.sync-echo", {"after": "hang"}, 5)
    harness.send(again)
    assert harness.results(5)[again.task_id].result.output == {"echo": {"after": "hang"}}
    warned = wait_for_log(
        shared.child, lambda line: "its thread still runs" in line.get("event", "")
    )
    assert warned["task_id"] == hang_sync.task_id and warned["workflow_id"] == harness.workflow_id


def peak_concurrency(results: list[TaskResult]) -> int:
    """Most handlers running at once, from each result's [finish - duration, finish].

    Both are whole milliseconds, so a start is taken 2 ms late: a task that starts as
    another ends must not count as overlapping it.
    """
    edges = sorted(
        [(r.finished_at_ms - r.duration_ms + 2, 1) for r in results]
        + [(r.finished_at_ms, -1) for r in results]
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_in_flight_never_exceeds_the_concurrency(harness: Harness) -> None:
    tasks = [harness.task("t.sync-echo", {"delay_ms": 300, "n": i}, i) for i in range(12)]
    harness.send(*tasks)
    got = harness.results(12)
    assert 2 <= peak_concurrency([r.result for r in got.values()]) <= 4


def test_a_full_worker_pauses_then_resumes_without_losing_a_record(
    harness: Harness, shared: Shared
) -> None:
    def count(event: str) -> int:
        return sum(1 for line in log_lines(shared.child) if line.get("event") == event)

    paused, resumed = count("paused all partitions"), count("resumed")
    tasks = [harness.task("t.echo", {"delay_ms": 1500, "n": i}, i) for i in range(12)]
    harness.send(*tasks, partition=4)
    got = harness.results(12)
    assert all(got[t.task_id].result.output == {"echo": t.input, "attempt": 1} for t in tasks)
    assert peak_concurrency([r.result for r in got.values()]) == 4
    # Full for over a second with records waiting: back-pressure paused the partitions.
    assert count("paused all partitions") > paused
    assert count("resumed") > resumed


def test_sigterm_drains_the_task_in_flight_then_exits_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    harness = Harness(settings)
    with Supervisor(settings, tmp_path) as supervisor:
        child = start_worker(supervisor, "drain", concurrency=2, grace_s=20, debug=True)
        task = harness.task("t.echo", {"delay_ms": 3000}, 0)
        harness.send(task, partition=2)
        wait_for_log(child, lambda line: line.get("event") == "task started")
        stopped_at = time.monotonic()
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(25) == 0, child.log_tail()
        assert time.monotonic() - stopped_at < 10
    result = harness.results(1)[task.task_id].result
    assert result.status is TaskStatus.SUCCEEDED and result.output == {
        "echo": {"delay_ms": 3000},
        "attempt": 1,
    }
    events = [line.get("event") for line in log_lines(child)]
    assert "draining: no new work; waiting for the tasks in flight" in events
    assert "worker left the group" in events
    # Acked after the effect: the drained task's offset is committed, nothing is redone.
    assert harness.committed("t.echo", 2) == 1
    harness.close()


def test_tasks_past_the_grace_are_abandoned_uncommitted(settings: Settings, tmp_path: Path) -> None:
    harness = Harness(settings)
    with Supervisor(settings, tmp_path) as supervisor:
        child = start_worker(supervisor, "abandon", grace_s=1, debug=True)
        done = harness.task("t.echo", {"quick": True}, 0)
        stuck = harness.task("t.hang", {}, 1)  # no deadline: runs until abandoned
        harness.send(done, stuck, partition=3)
        assert harness.results(1)[done.task_id].result.status is TaskStatus.SUCCEEDED
        wait_for_log(child, lambda line: line.get("task_id") == stuck.task_id)
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(20) == 0, child.log_tail()
    abandoned = [line for line in log_lines(child) if "abandoning" in line.get("event", "")]
    assert abandoned and abandoned[0]["abandoned"] == 1
    # The quick task is committed; the stuck one is not, so another worker runs it again.
    assert harness.committed("t.echo", 3) == 1
    assert harness.committed("t.hang", 3) in (-1001, 0)  # none, or "start at 0"
    harness.close()


def test_a_second_worker_takes_over_when_one_drains_mid_run(
    settings: Settings, tmp_path: Path
) -> None:
    harness = Harness(settings)
    with Supervisor(settings, tmp_path) as supervisor:
        first = start_worker(supervisor, "first", concurrency=2, grace_s=15)
        second = start_worker(supervisor, "second", concurrency=2, grace_s=15)
        topic = harness.topics.tasks("t.echo")

        def moved(line: dict[str, Any]) -> bool:
            return bool(
                line.get("event") == "partitions assigned"
                and line.get("topic") == topic
                and line.get("partitions")
            )

        # The cooperative rebalance moves half of the first worker's partitions over.
        wait_for_log(second, moved)
        tasks = [harness.task("t.echo", {"delay_ms": 300, "n": i}, i) for i in range(40)]
        harness.send(*tasks)
        time.sleep(1.0)
        first.process.send_signal(signal.SIGTERM)  # mid-run: a rebalance hands its partitions over
        assert first.process.wait(30) == 0, first.log_tail()
        got = harness.results(40)
        assert second.alive()
    assert {t.task_id for t in tasks} <= set(got)
    assert all(r.result.status is TaskStatus.SUCCEEDED for r in got.values())
    assert len({r.result.worker_id for r in got.values()}) == 2  # both did part of the work
    harness.close()


def test_undeliverable_results_stop_the_worker_without_committing(
    settings: Settings, tmp_path: Path
) -> None:
    harness = Harness(settings)
    admin = harness.clients.admin()
    with Supervisor(settings, tmp_path) as supervisor:
        child = start_worker(supervisor, "undeliverable")
        # The broker now refuses every result record as too large: deliveries fail.
        limit = ConfigEntry("max.message.bytes", "64", incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource(
            ConfigResource.Type.TOPIC, harness.topics.results, incremental_configs=[limit]
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(10)
        task = harness.task("t.echo", {"n": 1}, 0)
        harness.send(task, partition=0)
        assert child.process.wait(60) == 1, child.log_tail()
    events = [line for line in log_lines(child) if line.get("level") in ("warning", "error")]
    assert any(line["event"] == "delivery failed; producing again" for line in events)
    stopping = [line for line in events if line["event"].startswith("worker stopping")]
    assert stopping and "after 3 tries" in stopping[0]["error"]
    assert harness.committed("t.echo", 0) in (-1001, 0)  # never acked: the next worker redoes it
    harness.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_outcomes_by_capability(harness: Harness, shared: Shared) -> None:
    def value(samples: dict[Any, float], name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    before = scrape(shared.metrics_url)
    harness.send(
        harness.task("t.echo", {"ok": 1}, 0),
        harness.task("t.boom", {}, 1),
        harness.task("t.boom", {"permanent": True}, 2),
        harness.task("t.hang", {}, 3, deadline_in_s=1),
        harness.task("t.hang-sync", {"sleep_s": 10}, 4, deadline_in_s=1),
    )
    harness.send_raw(harness.topics.tasks("t.echo"), b"junk", key=b"junk")
    harness.results(5)
    deadline = time.monotonic() + 10
    while True:  # the gauge drops when the last delivery is acknowledged
        after = scrape(shared.metrics_url)
        if value(after, "fleet_worker_tasks_in_flight") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("fleet_worker_tasks_started_total", capability="t.echo") == 1
    assert delta("fleet_worker_tasks_succeeded_total", capability="t.echo") == 1
    assert delta("fleet_worker_tasks_failed_total", capability="t.boom", retryable="true") == 1
    assert delta("fleet_worker_tasks_failed_total", capability="t.boom", retryable="false") == 1
    assert delta("fleet_worker_task_timeouts_total", capability="t.hang") == 1
    assert delta("fleet_worker_task_timeouts_total", capability="t.hang-sync") == 1
    assert delta("fleet_worker_abandoned_threads_total", capability="t.hang-sync") == 1
    assert value(after, "fleet_worker_abandoned_threads_running") >= 1
    assert delta("fleet_worker_dead_letters_total", capability="t.echo") == 1
    assert delta("fleet_worker_handler_duration_seconds_count", capability="t.hang") == 1
    assert value(after, "fleet_worker_tasks_in_flight") == 0
