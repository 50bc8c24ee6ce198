"""STEP_STARTED: one event per dispatched attempt (retries included), never for work that
was not sent, and never before a step holds the resources it waits for."""

from __future__ import annotations

import pytest
from pydantic import JsonValue

from fleet.messages import EventKind, WorkflowEvent
from orchestrator.engine import Effects, Engine
from tests.unit.orchestrator.test_engine import INCIDENT, failure, kinds, result, spec, step, submit
from tests.unit.orchestrator.test_engine_market import _bids, _engine, _grant, _spec, _submit

pytestmark = pytest.mark.unit


def started(fx: Effects) -> list[WorkflowEvent]:
    return [e for e in fx.events if e.kind is EventKind.STEP_STARTED]


def test_every_dispatched_task_is_announced_with_its_task_and_attempt() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [triage] = submit(engine, INCIDENT).tasks
    hosts: list[JsonValue] = [f"web-{i}" for i in range(50)]
    fx = engine.on_result(result(triage, {"hosts": hosts}), 2_000)
    # A fan-out of 50 is 50 events, one per element, each naming its task and element.
    events = started(fx)
    assert [(e.task_id, e.index, e.attempt) for e in events] == [
        (task.task_id, task.index, 1) for task in fx.tasks
    ]
    assert {(e.step_id, e.at_ms, e.worker_id) for e in events} == {("enrich", 2_000, None)}
    assert not any(e.kind.terminal for e in events)


def test_each_retry_is_announced_with_its_attempt() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [task] = submit(engine, spec(step("a", retries=2, backoff_s=0))).tasks
    attempts = []
    for _ in range(2):
        fx = engine.on_result(failure(task, retryable=True), 2_000)
        [task] = fx.tasks
        attempts += [e.attempt for e in started(fx)]
    assert attempts == [2, 3]


def test_a_retry_after_a_backoff_is_announced_when_it_is_dispatched() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [task] = submit(engine, spec(step("a", retries=1, backoff_s=5))).tasks
    fx = engine.on_result(failure(task, retryable=True), 2_000)
    assert (fx.tasks, fx.events) == ([], [])  # backing off: nothing dispatched yet
    due = engine.next_due_ms()
    assert due is not None
    fx = engine.tick(due)
    [retry] = fx.tasks
    [event] = started(fx)
    assert (event.task_id, event.attempt, event.at_ms) == (retry.task_id, 2, retry.dispatched_at_ms)


def test_tasks_withdrawn_by_a_failure_in_the_same_step_are_not_announced() -> None:
    engine = Engine(has_capability=lambda cap: True)
    # Element 0 is dispatched before element 1's input fails: the task is withdrawn,
    # and so is its STEP_STARTED.
    doc = spec(step("each", for_each="$.input", input="$.item.host"), input=[{"host": "a"}, {}])
    fx = submit(engine, doc)
    assert fx.tasks == []
    assert kinds(fx) == [(EventKind.ACCEPTED, None), (EventKind.FAILED, None)]


def test_a_step_with_resources_starts_when_its_leases_are_held_not_when_it_bids() -> None:
    engine = _engine()
    fx = _submit(engine, _spec({"gpu": 1}))
    assert kinds(fx) == [(EventKind.ACCEPTED, None)]  # bidding, not started
    [bid] = _bids(fx)
    fx = engine.on_market(_grant(bid, unit_price=100), 1_100)
    [task] = fx.tasks
    [event] = started(fx)
    assert (event.step_id, event.task_id, event.attempt) == ("train", task.task_id, 1)
