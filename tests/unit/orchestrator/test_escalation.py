"""Escalation chains: a step's task moves down its fallbacks, and fails with every cause."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.errors import SpecError
from fleet.messages import EventKind, TaskAssigned
from orchestrator.engine import Engine
from orchestrator.spec import parse_spec
from tests.unit.orchestrator.test_engine import failure, kinds, result, spec, step, submit, terminal

pytestmark = pytest.mark.unit


class Gate:
    """Serves what it is told; ``broken`` capabilities are refused as a breaker would."""

    def __init__(self, served: set[str], broken: set[str] | None = None) -> None:
        self.served, self.broken = served, broken or set()
        self.generation = 0

    def serves(self, capability: str) -> bool:
        return capability in self.served and capability not in self.broken

    def why_not(self, capability: str) -> str:
        if capability in self.broken:
            return f"circuit breaker of {capability} open"
        return f"no live agent serves capability {capability!r}"

    def cause(self, capability: str) -> str:
        return "BreakerOpen" if capability in self.broken else "NoLiveAgent"


def chained(**fields: Any) -> dict[str, Any]:
    return spec(step("s", capability="main", fallback=["lite", "rules"], **fields))


def engine(gate: Gate | None = None) -> Engine:
    return (
        Engine(has_capability=lambda cap: True, agents=gate)
        if gate
        else Engine(has_capability=lambda cap: True)
    )


def only(tasks: list[TaskAssigned]) -> TaskAssigned:
    [task] = tasks
    return task


def test_a_task_failing_for_good_moves_down_its_chain_and_completes_there() -> None:
    e = engine()
    first = only(submit(e, chained(retries=1, backoff_s=0)).tasks)
    assert (first.capability, first.attempt) == ("main", 1)
    second = only(e.on_result(failure(first, retryable=True), 1_100).tasks)
    assert (second.capability, second.attempt) == ("main", 2)  # its retry, same link
    fx = e.on_result(failure(second, retryable=True, message="model down"), 1_200)
    lite = only(fx.tasks)
    assert (lite.task_id, lite.capability, lite.attempt) == (first.task_id, "lite", 3)
    [started] = [ev for ev in fx.events if ev.kind is EventKind.STEP_STARTED]
    assert started.reason == (
        "escalated to lite (fallback 1 of 2) after main: attempt 2 retries exhausted "
        "(1 allowed): model down"
    )
    # A late answer of the link left behind is stale: dropped, it completes nothing.
    late = e.on_result(result(second, {"late": True}), 1_250)
    assert late.dropped and not late.events
    fx = e.on_result(result(lite, {"by": "lite"}), 1_300)
    assert kinds(fx) == [(EventKind.STEP_COMPLETED, "s"), (EventKind.COMPLETED, None)]
    assert fx.events[0].reason == "done by fallback lite"
    assert fx.events[0].output == {"by": "lite"}


def test_the_chains_end_fails_the_step_with_every_links_cause() -> None:
    e = engine()
    main = only(submit(e, chained()).tasks)
    lite = only(e.on_result(failure(main, retryable=False, message="no"), 1_100).tasks)
    rules = only(e.on_result(failure(lite, retryable=True, message="slow"), 1_200).tasks)
    assert (rules.capability, rules.attempt) == ("rules", 3)
    end = terminal(e.on_result(failure(rules, retryable=False, message="bad input"), 1_300))
    assert end.kind is EventKind.FAILED and end.error is not None
    assert end.error.type == "ToolError" and end.error.attempt == 3
    assert end.error.message == (
        f"task {main.task_id} failed on every link of its chain: "
        "main: attempt 1 not retryable: no; "
        "lite: attempt 2 retries exhausted (0 allowed): slow; "
        f"rules: task {main.task_id} attempt 3 failed, not retryable: bad input"
    )


def test_an_open_breaker_passes_the_task_on_at_once_and_no_agent_after_the_wait() -> None:
    gate = Gate(served={"main", "rules"}, broken={"main"})  # lite: nobody serves it
    e = engine(gate)
    fx = submit(e, chained(no_agent_timeout_s=30))
    # main's breaker is open: straight to lite, which has no live agent: it waits.
    assert fx.tasks == []
    [waiting] = [ev for ev in fx.events if ev.kind is EventKind.STEP_WAITING]
    assert waiting.attempt == 2 and waiting.reason is not None
    assert waiting.reason.startswith("no live agent serves capability 'lite'")
    fx = e.tick(1_000 + 30_000)
    rules = only(fx.tasks)
    assert (rules.capability, rules.attempt) == ("rules", 3)
    [started] = [ev for ev in fx.events if ev.kind is EventKind.STEP_STARTED]
    assert started.reason is not None and "lite: no live agent serves" in started.reason


def test_a_result_below_min_confidence_escalates_and_at_the_end_fails() -> None:
    e = engine()
    main = only(submit(e, chained(min_confidence=0.8)).tasks)
    unsure = result(main, {"guess": 1}).model_copy(update={"confidence": 0.3})
    lite = only(e.on_result(unsure, 1_100).tasks)
    assert lite.capability == "lite"
    sure = result(lite, {"answer": 2}).model_copy(update={"confidence": 0.9})
    assert terminal(e.on_result(sure, 1_200)).kind is EventKind.COMPLETED

    alone = engine()
    task = only(submit(alone, spec(step("s", min_confidence=0.5))).tasks)
    no_confidence = result(task, 1)  # says nothing: accepted
    assert terminal(alone.on_result(no_confidence, 1_100)).kind is EventKind.COMPLETED
    alone2 = engine()
    task = only(submit(alone2, spec(step("s", min_confidence=0.5))).tasks)
    end = terminal(alone2.on_result(result(task, 1).model_copy(update={"confidence": 0.1}), 1_100))
    assert end.error is not None and end.error.type == "LowConfidence"
    assert end.error.message.endswith("confidence 0.1 below min_confidence 0.5")


def test_a_restore_mid_chain_keeps_the_link_and_the_causes() -> None:
    e = engine()
    main = only(submit(e, chained()).tasks)
    lite = only(e.on_result(failure(main, retryable=False), 1_100).tasks)
    record = e.record_of("wf-1")
    restored = engine()
    restored.restore("wf-1", record)
    assert restored.record_of("wf-1") == record
    rules = only(restored.on_result(failure(lite, retryable=False), 1_200).tasks)
    assert (rules.capability, rules.attempt) == ("rules", 3)
    end = terminal(restored.on_result(failure(rules, retryable=False), 1_300)).error
    assert end is not None
    assert "main: attempt 1 not retryable: boom; lite: attempt 2 not retryable: boom" in end.message


@pytest.mark.parametrize(
    ("fallback", "message"),
    [
        (["lite", "lite"], "a capability may appear once in the chain"),
        (["main"], "a capability may appear once in the chain"),
        (["gone"], "capability 'gone' has no task topic"),
    ],
)
def test_a_bad_chain_is_refused(fallback: list[str], message: str) -> None:
    doc = spec(step("s", capability="main", fallback=fallback))
    with pytest.raises(SpecError) as refused:
        parse_spec(doc, has_capability=lambda cap: cap != "gone")
    assert message in str(refused.value)
