"""Route only to the living: a ready task no live agent would take waits in the state,
is dispatched once one appears, and fails with NoLiveAgent after no_agent_timeout_s."""

from __future__ import annotations

import json

import pytest

from fleet.errors import DecodeError
from fleet.messages import EventKind, TaskStatus
from orchestrator import snapshot
from orchestrator.engine import Engine
from orchestrator.timers import Timer, TimerKind
from tests.unit.orchestrator.test_engine import failure, kinds, result, spec, step, submit, terminal
from tests.unit.orchestrator.test_engine_market import POLICY

pytestmark = pytest.mark.unit


class FakeAgents:
    """The engine's agents input: a set of served capabilities and a generation."""

    def __init__(self, *served: str) -> None:
        self.served = set(served)
        self.generation = 0
        self.asked = 0  # serves() calls: one per dispatch decision

    def serve(self, *capabilities: str) -> None:
        self.served |= set(capabilities)
        self.generation += 1

    def leave(self, *capabilities: str) -> None:
        self.served -= set(capabilities)
        self.generation += 1

    def serves(self, capability: str) -> bool:
        self.asked += 1
        return capability in self.served

    def why_not(self, capability: str) -> str:
        return f"no live agent serves capability {capability!r} (none is registered)"

    def cause(self, capability: str) -> str:
        return "NoLiveAgent"


def engine(agents: FakeAgents) -> Engine:
    return Engine(has_capability=lambda cap: True, agents=agents)


def test_a_step_nobody_serves_waits_with_one_event_naming_the_reason() -> None:
    agents = FakeAgents()
    e = engine(agents)
    fx = submit(e, spec(step("a", no_agent_timeout_s=60)), now=1_000)
    assert fx.tasks == []
    assert kinds(fx) == [(EventKind.ACCEPTED, None), (EventKind.STEP_WAITING, "a")]
    waiting = fx.events[1]
    assert (waiting.task_id, waiting.attempt, waiting.at_ms) == ("wf-1/a/0", 1, 1_000)
    assert waiting.reason == (
        "no live agent serves capability 'work' (none is registered); "
        "waiting up to 60 s (no_agent_timeout_s) for one"
    )
    assert (e.waiting, e.in_flight) == (1, 0)
    assert Timer(61_000, TimerKind.NO_AGENT, "wf-1", "wf-1/a/0") in e.pending_timers()
    # Nothing changed: the engine looks once (a first generation), then stays quiet.
    assert e.tick(1_000).events == []
    assert e.next_due_ms() == 61_000
    assert e.tick(30_000).events == []  # no second STEP_WAITING


def test_the_waiting_task_is_dispatched_as_soon_as_an_agent_appears() -> None:
    agents = FakeAgents()
    e = engine(agents)
    submit(e, spec(step("a", timeout_s=30)), now=1_000)
    e.tick(1_000)
    agents.serve("work")
    assert e.next_due_ms() == 1_000  # due since it started waiting: at once
    fx = e.tick(5_000)
    [task] = fx.tasks
    assert (task.task_id, task.attempt, task.dispatched_at_ms, task.deadline_ms) == (
        "wf-1/a/0",
        1,
        5_000,
        35_000,
    )
    assert kinds(fx) == [(EventKind.STEP_STARTED, "a")]
    assert (e.waiting, e.in_flight, e.pending_timers()[-1].kind) == (0, 1, TimerKind.TIMEOUT)
    assert "waiting_since_ms" not in json.dumps(e.record_of("wf-1"))
    assert terminal(e.on_result(result(task, "ok"), 6_000)).kind is EventKind.COMPLETED


def test_agents_changed_dispatches_only_what_is_served_now_longest_waiting_first() -> None:
    agents = FakeAgents()
    e = engine(agents)
    submit(e, spec(step("x", capability="other")), workflow_id="wf-0", now=500)
    submit(e, spec(step("a"), step("b")), workflow_id="wf-1", now=1_000)
    submit(e, spec(step("a")), workflow_id="wf-2", now=900)
    agents.served.add("work")  # no generation bump: agents_changed is the explicit call
    fx = e.agents_changed(2_000)
    assert [t.task_id for t in fx.tasks] == ["wf-2/a/0", "wf-1/a/0", "wf-1/b/0"]
    assert e.waiting == 1  # the other capability's task still waits


def test_a_task_still_waiting_at_its_timeout_fails_the_workflow_with_no_live_agent() -> None:
    agents = FakeAgents()
    e = engine(agents)
    submit(e, spec(step("a", no_agent_timeout_s=2.5)), now=1_000)
    assert e.tick(3_499).events == []
    fx = e.tick(3_500)
    event = terminal(fx)
    assert event.kind is EventKind.FAILED
    assert event.error is not None
    assert (event.error.type, event.error.step_id, event.error.attempt) == ("NoLiveAgent", "a", 1)
    assert event.error.message == (
        "task wf-1/a/0: no live agent serves capability 'work' (none is registered) within "
        "its no_agent_timeout_s of 2.5 s (waited 2.5 s)"
    )
    assert (e.active, e.waiting, fx.cancellations) == (0, 0, [])


def test_an_agent_there_when_the_timer_fires_gets_the_task_instead() -> None:
    agents = FakeAgents()
    e = engine(agents)
    submit(e, spec(step("a", no_agent_timeout_s=2)), now=1_000)
    agents.served.add("work")  # seen by no generation: only the timer finds out
    e._seen = agents.generation  # as if the engine had looked already
    [task] = e.tick(3_000).tasks
    assert task.dispatched_at_ms == 3_000


def test_a_retry_waits_when_its_agents_are_gone() -> None:
    agents = FakeAgents("work")
    e = engine(agents)
    [first] = submit(e, spec(step("a", retries=1, backoff_s=0)), now=1_000).tasks
    agents.leave("work")
    fx = e.on_result(failure(first, retryable=True), 2_000)
    assert fx.tasks == []
    assert [(ev.kind, ev.attempt) for ev in fx.events] == [(EventKind.STEP_WAITING, 2)]
    # A duplicate of attempt 1's failure is stale; attempt 2 was never sent.
    assert e.on_result(failure(first, retryable=True), 2_100).dropped == [
        "result wf-1/a/0 attempt 1: stale, current attempt is 2"
    ]
    agents.serve("work")
    [second] = e.tick(3_000).tasks
    assert second.attempt == 2


def test_a_result_for_an_attempt_never_sent_is_dropped() -> None:
    agents = FakeAgents()
    e = engine(agents)
    submit(e, spec(step("a")), now=1_000)
    agents.serve("work")
    [task] = e.tick(1_500).tasks
    agents.leave("work")
    fx = e.on_result(failure(task, retryable=True), 2_000)  # no retries: fails
    assert terminal(fx).kind is EventKind.FAILED
    # A step of a live workflow whose attempt waits: its forged result is dropped.
    e2 = engine(FakeAgents())
    submit(e2, spec(step("a")), now=1_000)
    fx = e2.on_result(result(task), 1_100)
    assert fx.dropped == [
        "result wf-1/a/0 attempt 1: attempt 1 was never dispatched, it waits for a live agent"
    ]


def test_every_element_of_a_fan_out_waits_and_goes() -> None:
    agents = FakeAgents()
    e = engine(agents)
    doc = spec(step("f", for_each="$.input.items", input="$.item"), input={"items": [1, 2, 3]})
    fx = submit(e, doc, now=1_000)
    assert [ev.index for ev in fx.events if ev.kind is EventKind.STEP_WAITING] == [0, 1, 2]
    agents.serve("work")
    assert [t.input for t in e.tick(1_200).tasks] == [1, 2, 3]


def test_a_step_with_resources_waits_before_it_bids() -> None:
    agents = FakeAgents()
    e = Engine(has_capability=lambda _c: True, policy=POLICY, agents=agents)
    fx = submit(e, spec(step("a", resources={"gpu": 1})), now=1_000)
    assert kinds(fx)[0][0] is EventKind.ACCEPTED
    assert (fx.market, fx.tasks, e.waiting) == ([], [], 1)
    agents.serve("work")
    fx = e.tick(2_000)
    assert ([m.kind.value for m in fx.market], fx.tasks) == (["BID"], [])


def test_a_waiting_task_survives_a_restore_and_goes_when_its_agent_appears() -> None:
    agents = FakeAgents()
    primary = engine(agents)
    submit(primary, spec(step("a", no_agent_timeout_s=60)), now=1_000)
    changes = json.loads(json.dumps(primary.take_changes()))
    assert changes["wf-1"]["tasks"]["wf-1/a/0"]["waiting_since_ms"] == 1_000
    fresh = engine(agents)
    fresh.restore("wf-1", changes["wf-1"])
    assert fresh.pending_timers() == primary.pending_timers()
    assert (fresh.waiting, fresh.in_flight) == (1, 0)
    assert fresh.tick(2_000).tasks == []  # still nobody: it keeps waiting, quietly
    assert fresh.tick(2_000).events == []
    agents.serve("work")
    [task] = fresh.tick(3_000).tasks
    assert task.dispatched_at_ms == 3_000
    # Restored after the agent came: the first tick looks again (not only on a change).
    late = engine(agents)
    late.restore("wf-1", changes["wf-1"])
    assert late.next_due_ms() == 1_000
    assert [t.task_id for t in late.tick(3_000).tasks] == ["wf-1/a/0"]
    # And at its timeout, a restored waiting task fails as the original would have.
    gone = FakeAgents()
    lost = engine(gone)
    lost.restore("wf-1", changes["wf-1"])
    assert terminal(lost.tick(61_000)).error.type == "NoLiveAgent"  # type: ignore[union-attr]


def test_a_record_waiting_and_backing_off_at_once_is_refused() -> None:
    agents = FakeAgents()
    e = engine(agents)
    submit(e, spec(step("a")), now=1_000)
    record = json.loads(json.dumps(e.record_of("wf-1")))
    record["tasks"]["wf-1/a/0"]["retry_at_ms"] = 5_000
    with pytest.raises(DecodeError, match="waiting for a live agent that is also"):
        snapshot.decode("wf-1", record)


def test_without_a_view_of_the_agents_everything_is_dispatched_as_before() -> None:
    e = Engine(has_capability=lambda cap: True)
    fx = submit(e, spec(step("a")), now=1_000)
    assert len(fx.tasks) == 1
    assert e.waiting == 0
    assert fx.tasks[0].attempt == 1 and result(fx.tasks[0]).status is TaskStatus.SUCCEEDED


def test_each_dispatch_decision_asks_once() -> None:
    """A yes may be spent (a half-open circuit breaker's trial, orchestrator.shell.breakers),
    so a waiting task that goes on is asked about once, not again on its way out."""
    agents = FakeAgents()
    e = engine(agents)
    submit(e, spec(step("a"), step("b")), now=1_000)  # two ready tasks, both wait
    assert agents.asked == 2
    agents.serve("work")
    fx = e.tick(2_000)
    assert len(fx.tasks) == 2 and agents.asked == 4
