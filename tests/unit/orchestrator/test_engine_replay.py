"""The recovery invariant, as a property.

Random workflows get random inputs (results of every kind, duplicates, stale answers,
ticks, cancels, resubmissions). At random points the engine's changes go to a model of
the compacted changelog, and a FRESH engine restored from that changelog takes over,
while the old engine keeps running as a shadow: both must produce identical effects and
identical records from then on. Across every takeover: no ``(task_id, attempt)`` is
dispatched twice, each accepted workflow ends with exactly one terminal event, and no
task is dispatched for a workflow that has ended.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from fleet.messages import (
    EventKind,
    TaskAssigned,
    TaskResult,
    TaskStatus,
    WorkflowCancelRequested,
    WorkflowSubmitted,
)
from orchestrator.engine import Effects, Engine
from orchestrator.timers import Timer, TimerKind
from tests.unit.orchestrator.test_engine import failure, result
from tests.unit.orchestrator.test_waiting import FakeAgents

pytestmark = pytest.mark.unit

RETENTION_MS = 4_000


@st.composite
def workflow_docs(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.integers(1, 4))
    steps, lists = [], {}
    for i in range(size):
        earlier = [f"s{j}" for j in range(i)]
        needs = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        doc: dict[str, Any] = {
            "id": f"s{i}",
            "capability": "work",
            "needs": needs,
            "retries": draw(st.integers(0, 3)),
            "timeout_s": draw(st.sampled_from([0.5, 1.0, 3.0])),
            "backoff_s": draw(st.sampled_from([0.0, 0.2, 1.0])),
            "max_backoff_s": 1.5,
            "no_agent_timeout_s": draw(st.sampled_from([1.0, 4.0])),
            "input": {"deps": [f"$.steps.{n}.output" for n in needs]},
        }
        fan_out = draw(st.none() | st.integers(0, 3))
        if fan_out is not None:
            lists[f"s{i}"] = list(range(fan_out))
            doc["for_each"] = f"$.input.lists.s{i}"
            doc["input"]["item"] = "$.item"
        steps.append(doc)
    spec: dict[str, Any] = {
        "name": "replay",
        "input": {"lists": lists},
        "steps": steps,
        "output": {s["id"]: f"$.steps.{s['id']}.output" for s in steps},
    }
    deadline = draw(st.none() | st.sampled_from([2.0, 6.0, 30.0]))
    if deadline is not None:
        spec["deadline_s"] = deadline
    return spec


def new_engine(agents: FakeAgents) -> Engine:
    return Engine(
        has_capability=lambda cap: True, finished_retention_ms=RETENTION_MS, agents=agents
    )


def expected_timers(engine: Engine, ids: list[str]) -> list[Timer]:
    """The timers that must be pending, derived from the state alone."""
    timers = []
    for workflow_id in ids:
        state = engine.state_of(workflow_id)
        finished = engine.finished_of(workflow_id)
        if finished is not None:
            due = finished.at_ms + RETENTION_MS
            timers.append(Timer(due, TimerKind.EXPIRY, workflow_id, ""))
        if state is None:
            continue
        if state.deadline_ms is not None:
            timers.append(Timer(state.deadline_ms, TimerKind.DEADLINE, workflow_id, ""))
        for task_id, run in state.tasks.items():
            if run.waiting_since_ms is not None:
                step = state.spec.step(run.step_id)
                due = run.waiting_since_ms + round(step.no_agent_timeout_s * 1000)
                timers.append(Timer(due, TimerKind.NO_AGENT, workflow_id, task_id))
            elif run.retry_at_ms is not None:
                timers.append(Timer(run.retry_at_ms, TimerKind.RETRY, workflow_id, task_id))
            elif not run.succeeded:
                timers.append(Timer(run.deadline_ms, TimerKind.TIMEOUT, workflow_id, task_id))
    return sorted(timers)


@dataclass
class World:
    """The primary engine, its shadow, the changelog and what the outside world saw."""

    ids: list[str]
    agents: FakeAgents = field(default_factory=lambda: FakeAgents("work"))
    primary: Engine = field(init=False)
    shadow: Engine | None = None
    changelog: dict[str, JsonValue] = field(default_factory=dict)
    pending: list[TaskAssigned] = field(default_factory=list)
    delivered: list[TaskResult] = field(default_factory=list)
    incarnation: Counter[str] = field(default_factory=Counter)
    open: set[str] = field(default_factory=set)  # accepted and not yet terminal
    terminals: Counter[tuple[str, int]] = field(default_factory=Counter)
    outcomes: Counter[EventKind] = field(default_factory=Counter)
    dispatched: Counter[tuple[str, int, str, int]] = field(default_factory=Counter)
    takeovers: int = 0

    def __post_init__(self) -> None:
        self.primary = new_engine(self.agents)

    def apply(self, call: str, *args: Any) -> Effects:
        fx: Effects = getattr(self.primary, call)(*args)
        if self.shadow is not None:
            assert getattr(self.shadow, call)(*args) == fx
            for workflow_id in self.ids:
                assert self.shadow.record_of(workflow_id) == self.primary.record_of(workflow_id)
            assert self.shadow.pending_timers() == self.primary.pending_timers()
        self.observe(fx)
        self.check_state()
        return fx

    def observe(self, fx: Effects) -> None:
        for event in fx.events:
            workflow_id = event.workflow_id
            if event.kind is EventKind.ACCEPTED:
                assert workflow_id not in self.open
                self.new_incarnation(workflow_id)
                self.open.add(workflow_id)
            elif event.kind.terminal and workflow_id not in self.open:
                # Only a submission that an earlier cancel overtook ends without being
                # accepted: an incarnation that opens and closes at once, with no work.
                assert event.kind is EventKind.CANCELLED, f"terminal for a closed {workflow_id}"
                assert event.error is not None
                assert event.error.message == "cancelled before it was submitted"
                self.new_incarnation(workflow_id)
                self.terminals[(workflow_id, self.incarnation[workflow_id])] += 1
                self.outcomes[event.kind] += 1
            elif event.kind.terminal:
                self.open.discard(workflow_id)
                self.terminals[(workflow_id, self.incarnation[workflow_id])] += 1
                self.outcomes[event.kind] += 1
            else:
                assert workflow_id in self.open
        for task in fx.tasks:
            workflow_id = task.workflow_id
            assert workflow_id in self.open, f"task {task.task_id} for an ended workflow"
            key = (workflow_id, self.incarnation[workflow_id], task.task_id, task.attempt)
            assert self.dispatched[key] == 0, f"{key} dispatched twice"
            if task.attempt > 1:
                assert self.dispatched[(*key[:3], task.attempt - 1)] == 1
            self.dispatched[key] += 1
        self.pending.extend(fx.tasks)

    def new_incarnation(self, workflow_id: str) -> None:
        self.incarnation[workflow_id] += 1
        # The id is reused only after the old incarnation's record expired. Task ids carry
        # no incarnation, so answers to the old one must not outlive the retention: the
        # model drops them here.
        self.pending = [t for t in self.pending if t.workflow_id != workflow_id]
        self.delivered = [r for r in self.delivered if r.workflow_id != workflow_id]

    def check_state(self) -> None:
        engine = self.primary
        states = [s for s in map(engine.state_of, self.ids) if s is not None]
        assert engine.in_flight == sum(run.in_flight for s in states for run in s.tasks.values())
        assert engine.active == len(states) == len(self.open)
        assert engine.pending_timers() == expected_timers(engine, self.ids)

    def take_over(self) -> None:
        """Flush changes to the changelog; a fresh engine restored from it takes over."""
        changes = self.primary.take_changes()
        if self.shadow is not None:
            assert self.shadow.take_changes() == changes
        for workflow_id, record in changes.items():
            if record is None:
                self.changelog.pop(workflow_id, None)
            else:
                self.changelog[workflow_id] = json.loads(json.dumps(record))  # as stored
        fresh = new_engine(self.agents)
        for workflow_id, record in self.changelog.items():
            fresh.restore(workflow_id, record)
        for workflow_id in self.ids:
            assert fresh.record_of(workflow_id) == self.primary.record_of(workflow_id)
        assert fresh.pending_timers() == self.primary.pending_timers()
        assert (fresh.active, fresh.in_flight, fresh.retained) == (
            self.primary.active,
            self.primary.in_flight,
            self.primary.retained,
        )
        self.shadow, self.primary = self.primary, fresh
        self.takeovers += 1


def answer(task: TaskAssigned, outcome: int) -> TaskResult:
    if outcome == 0:
        return failure(task, retryable=False)
    if outcome <= 6:
        return failure(task, retryable=True)
    if outcome == 7:
        return result(task, status=TaskStatus.UNKNOWN)
    return result(task, {"task": task.task_id})


ACTIONS = [
    *["result"] * 5,
    *["duplicate", "advance", "advance", "tick", "cancel", "resubmit", "agents"],
]


@settings(max_examples=150, deadline=None)
@given(docs=st.lists(workflow_docs(), min_size=1, max_size=3), data=st.data())
def test_a_restored_engine_continues_identically_and_nothing_runs_twice(
    docs: list[dict[str, Any]], data: st.DataObject
) -> None:
    by_id = {f"wf-{n}": doc for n, doc in enumerate(docs)}
    world = World(ids=[*by_id, "ghost"])
    now = 1_000

    def submit(workflow_id: str) -> None:
        request = WorkflowSubmitted(
            workflow_id=workflow_id, spec=by_id[workflow_id], submitted_at_ms=now
        )
        world.apply("submit", request, now)

    for workflow_id in by_id:
        submit(workflow_id)
    for _ in range(data.draw(st.integers(0, 60), label="actions")):
        if data.draw(st.integers(0, 4), label="take over?") == 0:
            world.take_over()
        action = data.draw(st.sampled_from(ACTIONS), label="action")
        if action == "result" and world.pending:
            task = world.pending.pop(data.draw(st.integers(0, len(world.pending) - 1)))
            reply = answer(task, data.draw(st.integers(0, 19), label="outcome"))
            world.delivered.append(reply)
            world.apply("on_result", reply, now)
        elif action == "duplicate" and world.delivered:
            again = data.draw(st.sampled_from(world.delivered), label="again")
            fx = world.apply("on_result", again, now)
            assert (fx.tasks, fx.events, fx.finished) == ([], [], [])
        elif action == "advance":
            now += data.draw(st.integers(0, 3_000), label="ms")
            world.apply("tick", now)
        elif action == "tick":
            world.apply("tick", now)
        elif action == "cancel":
            workflow_id = data.draw(st.sampled_from(world.ids), label="cancel")
            request = WorkflowCancelRequested(workflow_id=workflow_id, requested_at_ms=now)
            world.apply("cancel", request, now)
        elif action == "resubmit":
            submit(data.draw(st.sampled_from(list(by_id)), label="resubmit"))
        elif action == "agents":
            # The work's agents come or go; waiting tasks go on at the next tick.
            if world.agents.served:
                world.agents.leave("work")
            else:
                world.agents.serve("work")

    # Drain: every latest attempt succeeds; time runs past every timer and retention.
    if not world.agents.served:
        world.agents.serve("work")
    for _ in range(100):
        if not world.open and not world.pending:
            break
        if data.draw(st.integers(0, 3), label="take over while draining?") == 0:
            world.take_over()
        if world.pending:
            task = world.pending.pop(0)
            world.apply("on_result", result(task, {"task": task.task_id}), now)
        else:
            now += 1_000
            world.apply("tick", now)
    assert not world.open
    world.apply("tick", now + 10 * RETENTION_MS)
    assert (world.primary.active, world.primary.in_flight, world.primary.retained) == (0, 0, 0)
    assert all(count == 1 for count in world.terminals.values())
    assert len(world.terminals) == sum(world.incarnation.values())
    for workflow_id, incarnation, task_id, attempt in world.dispatched:
        step_id = task_id.split("/")[1]
        step = next(s for s in by_id[workflow_id]["steps"] if s["id"] == step_id)
        assert attempt <= step["retries"] + 1, (workflow_id, incarnation, task_id)
    world.take_over()  # the tombstones leave an empty changelog
    assert world.changelog == {}
