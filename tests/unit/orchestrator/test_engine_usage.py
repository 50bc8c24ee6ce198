"""A workflow's usage: each accepted attempt's lines summed onto its terminal event."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.messages import TaskResult, UsageLine
from orchestrator.engine import Engine
from tests.unit.orchestrator.test_engine import failure, result, spec, step, submit, terminal

pytestmark = pytest.mark.unit


def used(outcome: TaskResult, *lines: UsageLine) -> TaskResult:
    return outcome.model_copy(update={"usage": list(lines), "version": "2.0.0"})


def test_failed_and_succeeded_attempts_and_every_step_count_once_each() -> None:
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(step("a", retries=1, backoff_s=0), step("b", needs=["a"]), tenant="default")
    [a1] = submit(engine, doc).tasks
    fx = engine.on_result(used(failure(a1, retryable=True), UsageLine(model="m", cost=5)), 1_100)
    assert fx.finished[0].usage == [UsageLine(model="m", cost=5)]
    assert (fx.finished[0].version, fx.finished[0].tenant) == ("2.0.0", "default")
    [a2] = fx.tasks
    # The same failure again (a redelivery) is dropped, and not counted twice.
    again = engine.on_result(used(failure(a1, retryable=True), UsageLine(model="m", cost=5)), 1_150)
    assert again.dropped and again.finished == []
    fx = engine.on_result(used(result(a2, 1), UsageLine(model="m", tokens_in=10, cost=7)), 1_200)
    [b] = fx.tasks
    # A restart in the middle: the running sum is in the changelog record.
    record = engine.record_of("wf-1")
    assert json.loads(json.dumps(record))["usage"] == [
        {"model": "m", "tokens_in": 10, "tokens_out": 0, "cost": 12}
    ]
    restored = Engine(has_capability=lambda cap: True)
    restored.restore("wf-1", record)
    fx = restored.on_result(
        used(result(b, 2), UsageLine(model="rules", tokens_out=3), UsageLine(model="m", cost=1)),
        1_300,
    )
    assert terminal(fx).usage == [
        UsageLine(model="m", tokens_in=10, cost=13),
        UsageLine(model="rules", tokens_out=3),
    ]


def test_a_workflow_without_reports_has_no_usage_anywhere() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [a] = submit(engine, spec(step("a"))).tasks
    record = engine.record_of("wf-1")
    assert isinstance(record, dict) and "usage" not in record
    assert terminal(engine.on_result(result(a, 1), 1_100)).usage == []


@settings(max_examples=50, deadline=None)
@given(
    costs=st.lists(st.integers(0, 10**9), min_size=1, max_size=8),
    repeats=st.lists(st.integers(0, 7), max_size=10),
)
def test_redelivered_results_never_change_the_sum(costs: list[int], repeats: list[int]) -> None:
    """A fan-out of n elements, each result delivered once plus any number of repeats
    (after its own delivery): the terminal sum is each element's cost once."""
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(step("a", for_each="$.input.items", input={"i": "$.item"}), input={"items": costs})
    tasks = submit(engine, doc).tasks
    events = []
    delivered: list[TaskResult] = []
    for n, task in enumerate(tasks):
        outcome = used(result(task, costs[n]), UsageLine(cost=costs[n]))
        delivered.append(outcome)
        events += engine.on_result(outcome, 1_100 + n).events
        for again in [delivered[r] for r in repeats if r < len(delivered)]:
            events += engine.on_result(again, 1_100 + n).events
    [end] = [e for e in events if e.kind.terminal]
    assert end.usage == [UsageLine(cost=sum(costs))]
