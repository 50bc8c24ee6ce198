from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from fleet.messages import (
    EventKind,
    TaskAssigned,
    TaskError,
    TaskResult,
    TaskStatus,
    WorkflowEvent,
    WorkflowSubmitted,
)
from orchestrator.engine import Effects, Engine, FinishedTask

pytestmark = pytest.mark.unit

INCIDENT: dict[str, Any] = {
    "name": "incident-response",
    "input": {"alert": "disk full on web-1, web-2"},
    "steps": [
        {"id": "triage", "capability": "classify", "input": {"text": "$.input.alert"}},
        {
            "id": "enrich",
            "capability": "lookup",
            "needs": ["triage"],
            "for_each": "$.steps.triage.output.hosts",
            "input": {"host": "$.item", "position": "$.index"},
        },
        {
            "id": "report",
            "capability": "summarize",
            "needs": ["enrich"],
            "input": {"findings": "$.steps.enrich.output"},
            "retries": 2,
        },
    ],
    "output": "$.steps.report.output",
}


def step(step_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "capability": fields.pop("capability", "work"), **fields}


def spec(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "wf", "steps": list(steps), **fields}


def submit(engine: Engine, doc: JsonValue, workflow_id: str = "wf-1", now: int = 1_000) -> Effects:
    request = WorkflowSubmitted(workflow_id=workflow_id, spec=doc, submitted_at_ms=500)
    return engine.submit(request, now)


def result(
    task: TaskAssigned,
    output: JsonValue = None,
    *,
    status: TaskStatus = TaskStatus.SUCCEEDED,
    error: TaskError | None = None,
    attempt: int | None = None,
) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        workflow_id=task.workflow_id,
        step_id=task.step_id,
        capability=task.capability,
        attempt=task.attempt if attempt is None else attempt,
        index=task.index,
        status=status,
        output=output,
        error=error,
        duration_ms=5,
        worker_id="worker-1",
        finished_at_ms=0,
    )


def failure(task: TaskAssigned, *, retryable: bool, message: str = "boom") -> TaskResult:
    error = TaskError(type="ToolError", message=message, retryable=retryable)
    return result(task, status=TaskStatus.FAILED, error=error)


def kinds(effects: Effects) -> list[tuple[EventKind, str | None]]:
    return [(event.kind, event.step_id) for event in effects.events]


def terminal(effects: Effects) -> WorkflowEvent:
    [event] = [e for e in effects.events if e.kind.terminal]
    return event


def test_linear_chain_runs_each_step_after_the_previous() -> None:
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(
        step("a", input={"q": "$.input.q"}, timeout_s=2.5),
        step("b", needs=["a"], input={"prev": "$.steps.a.output.v"}),
        step("c", needs=["b"], input="$.steps.b.output"),
        input={"q": "why"},
        output={"a": "$.steps.a.output.v", "c": "$.steps.c.output"},
    )
    fx = submit(engine, doc, now=1_000)
    assert kinds(fx) == [(EventKind.ACCEPTED, None), (EventKind.STEP_STARTED, "a")]
    accepted, started = fx.events
    assert (accepted.workflow_name, accepted.submitted_at_ms, accepted.at_ms) == ("wf", 500, 1_000)
    [a] = fx.tasks
    assert a == TaskAssigned(
        task_id="wf-1/a/0",
        workflow_id="wf-1",
        step_id="a",
        capability="work",
        attempt=1,
        index=None,
        input={"q": "why"},
        deadline_ms=3_500,
        dispatched_at_ms=1_000,
    )
    assert (engine.active, engine.in_flight) == (1, 1)
    # Dispatched: the task and its attempt, no worker yet (any worker of the pool may take it).
    assert (started.task_id, started.attempt, started.index, started.worker_id) == (
        "wf-1/a/0",
        1,
        None,
        None,
    )
    assert (started.at_ms, started.workflow_name, started.submitted_at_ms) == (1_000, "wf", 500)

    fx = engine.on_result(result(a, {"v": 1}), 1_200)
    assert kinds(fx) == [(EventKind.STEP_COMPLETED, "a"), (EventKind.STEP_STARTED, "b")]
    assert fx.events[0].output == {"v": 1}
    # A plain step's completion names the attempt and the worker that did it.
    done = fx.events[0]
    assert (done.task_id, done.attempt, done.worker_id) == ("wf-1/a/0", 1, "worker-1")
    assert fx.finished == [
        FinishedTask(capability="work", latency_ms=200, succeeded=True, tenant="default", usage=[])
    ]
    [b] = fx.tasks
    assert (b.task_id, b.input, b.deadline_ms) == ("wf-1/b/0", {"prev": 1}, 1_200 + 300_000)

    fx = engine.on_result(result(b, "B"), 1_300)
    [c] = fx.tasks
    assert c.input == "B"

    fx = engine.on_result(result(c, ["done"]), 1_400)
    assert kinds(fx) == [(EventKind.STEP_COMPLETED, "c"), (EventKind.COMPLETED, None)]
    assert terminal(fx).output == {"a": 1, "c": ["done"]}
    assert all(e.submitted_at_ms == 500 and e.workflow_name == "wf" for e in fx.events)
    assert fx.tasks == []
    assert (engine.active, engine.in_flight) == (0, 0)


def test_diamond_runs_the_middle_in_parallel_and_joins() -> None:
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(
        step("a"),
        step("b", needs=["a"], input="$.steps.a.output"),
        step("c", needs=["a"], input="$.steps.a.output"),
        step("d", needs=["b", "c"], input=["$.steps.b.output", "$.steps.c.output"]),
        output="$.steps.d.output",
    )
    [a] = submit(engine, doc).tasks
    fx = engine.on_result(result(a, "A"), 2_000)
    assert [(t.step_id, t.input) for t in fx.tasks] == [("b", "A"), ("c", "A")]
    b, c = fx.tasks
    fx = engine.on_result(result(c, "C"), 2_100)
    assert fx.tasks == []
    assert kinds(fx) == [(EventKind.STEP_COMPLETED, "c")]
    fx = engine.on_result(result(b, "B"), 2_200)
    [d] = fx.tasks
    assert (d.step_id, d.input) == ("d", ["B", "C"])
    fx = engine.on_result(result(d, "D"), 2_300)
    assert terminal(fx).kind is EventKind.COMPLETED
    assert terminal(fx).output == "D"


@settings(max_examples=25, deadline=None)
@given(order=st.permutations(list(range(50))))
def test_fan_out_of_50_fans_in_in_element_order(order: list[int]) -> None:
    engine = Engine(has_capability=lambda cap: True)
    [triage] = submit(engine, INCIDENT).tasks
    hosts: list[JsonValue] = [f"web-{i}" for i in range(50)]
    fx = engine.on_result(result(triage, {"hosts": hosts}), 2_000)
    assert [t.task_id for t in fx.tasks] == [f"wf-1/enrich/{i}" for i in range(50)]
    assert [t.index for t in fx.tasks] == list(range(50))
    assert [t.input for t in fx.tasks] == [{"host": h, "position": i} for i, h in enumerate(hosts)]
    enrich = fx.tasks
    for delivered, index in enumerate(order, start=1):
        fx = engine.on_result(result(enrich[index], {"host": hosts[index]}), 3_000 + index)
        if delivered < 50:
            assert fx.tasks == []
            assert fx.events == []
    assert kinds(fx) == [(EventKind.STEP_COMPLETED, "enrich"), (EventKind.STEP_STARTED, "report")]
    expected = [{"host": h} for h in hosts]
    assert fx.events[0].output == expected
    # A fan-out's completion names no single attempt or worker.
    assert (fx.events[0].task_id, fx.events[0].attempt, fx.events[0].worker_id) == (None,) * 3
    [report] = fx.tasks
    assert report.input == {"findings": expected}


def test_empty_fan_out_completes_at_once_and_cascades() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [triage] = submit(engine, INCIDENT).tasks
    fx = engine.on_result(result(triage, {"hosts": []}), 2_000)
    assert kinds(fx) == [
        (EventKind.STEP_COMPLETED, "triage"),
        (EventKind.STEP_COMPLETED, "enrich"),
        (EventKind.STEP_STARTED, "report"),
    ]
    assert fx.events[1].output == []
    [report] = fx.tasks
    assert report.input == {"findings": []}


def test_empty_fan_outs_can_complete_a_workflow_inside_submit() -> None:
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(
        step("each", for_each="$.input.items", input="$.item"),
        step("after", needs=["each"], for_each="$.steps.each.output", input="$.item"),
        input={"items": []},
        output={"n": "$.steps.after.output"},
    )
    fx = submit(engine, doc)
    assert kinds(fx) == [
        (EventKind.ACCEPTED, None),
        (EventKind.STEP_COMPLETED, "each"),
        (EventKind.STEP_COMPLETED, "after"),
        (EventKind.COMPLETED, None),
    ]
    assert terminal(fx).output == {"n": []}
    assert (fx.tasks, engine.active) == ([], 0)


def test_a_retryable_failure_is_retried_then_succeeds() -> None:
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(step("a", retries=2, timeout_s=10, backoff_s=0), output="$.steps.a.output")
    [first] = submit(engine, doc).tasks
    fx = engine.on_result(failure(first, retryable=True), 5_000)
    assert kinds(fx) == [(EventKind.STEP_STARTED, "a")]  # the retry is announced, attempt 2
    assert (fx.events[0].task_id, fx.events[0].attempt, fx.events[0].at_ms) == (
        first.task_id,
        2,
        5_000,
    )
    assert fx.finished == [
        FinishedTask(
            capability="work", latency_ms=4_000, succeeded=False, tenant="default", usage=[]
        )
    ]
    [second] = fx.tasks
    assert (second.task_id, second.attempt, second.input) == (first.task_id, 2, first.input)
    assert (second.dispatched_at_ms, second.deadline_ms) == (5_000, 15_000)
    fx = engine.on_result(result(second, "ok"), 6_000)
    assert fx.finished == [
        FinishedTask(
            capability="work", latency_ms=1_000, succeeded=True, tenant="default", usage=[]
        )
    ]
    assert terminal(fx).kind is EventKind.COMPLETED
    assert terminal(fx).output == "ok"


def test_retrying_one_element_leaves_its_siblings_alone() -> None:
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(
        step("each", for_each="$.input", input="$.item", retries=1, backoff_s=0), input=[1, 2, 3]
    )
    e0, e1, e2 = submit(engine, doc).tasks
    fx = engine.on_result(failure(e1, retryable=True), 2_000)
    [retry] = fx.tasks
    assert (retry.task_id, retry.attempt, retry.index, retry.input) == ("wf-1/each/1", 2, 1, 2)
    engine.on_result(result(e0, "r0"), 2_100)
    engine.on_result(result(e2, "r2"), 2_200)
    fx = engine.on_result(result(retry, "r1"), 2_300)
    assert fx.events[0].output == ["r0", "r1", "r2"]
    assert terminal(fx).kind is EventKind.COMPLETED


def test_a_permanent_failure_fails_at_once_despite_retries() -> None:
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(step("a"), step("b", needs=["a"], retries=5))
    [a] = submit(engine, doc).tasks
    [b] = engine.on_result(result(a, 1), 2_000).tasks
    fx = engine.on_result(failure(b, retryable=False, message="bad credentials"), 3_000)
    assert fx.tasks == []
    event = terminal(fx)
    assert kinds(fx) == [(EventKind.FAILED, None)]
    assert event.error is not None
    assert (event.error.type, event.error.step_id, event.error.attempt) == ("ToolError", "b", 1)
    assert event.error.message == "task wf-1/b/0 attempt 1 failed, not retryable: bad credentials"
    assert (event.submitted_at_ms, event.at_ms) == (500, 3_000)
    assert (engine.active, engine.in_flight) == (0, 0)


def test_exhausted_retries_fail_the_workflow_with_the_last_cause() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [task] = submit(engine, spec(step("a", retries=2, backoff_s=0))).tasks
    for attempt in (1, 2):
        fx = engine.on_result(failure(task, retryable=True, message=f"flaky {attempt}"), 2_000)
        [task] = fx.tasks
        assert task.attempt == attempt + 1
    fx = engine.on_result(failure(task, retryable=True, message="flaky 3"), 3_000)
    error = terminal(fx).error
    assert error is not None
    assert (error.step_id, error.attempt, error.type) == ("a", 3, "ToolError")
    assert error.message == "task wf-1/a/0 attempt 3 failed, retries exhausted (2 allowed): flaky 3"


def test_an_unknown_status_is_a_non_retryable_failure() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [task] = submit(engine, spec(step("a", retries=3))).tasks
    fx = engine.on_result(result(task, status=TaskStatus.UNKNOWN), 2_000)
    error = terminal(fx).error
    assert error is not None
    assert (error.type, error.step_id, error.attempt) == ("TaskFailed", "a", 1)
    assert "status UNKNOWN" in error.message
    assert fx.finished == [
        FinishedTask(
            capability="work", latency_ms=1_000, succeeded=False, tenant="default", usage=[]
        )
    ]


def test_duplicate_stale_future_and_unknown_results_are_dropped() -> None:
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(
        step("a", for_each="$.input", input="$.item", retries=1, backoff_s=0),
        step("z"),
        input=[1, 2],
    )
    e0, e1, z = submit(engine, doc).tasks
    assert engine.on_result(result(e0, "x"), 2_000).finished != []

    dup = engine.on_result(result(e0, "different"), 2_001)
    assert dup == Effects(dropped=["result wf-1/a/0 attempt 1: duplicate of an accepted result"])
    future = engine.on_result(result(e1, "x", attempt=2), 2_002)
    assert future.dropped == ["result wf-1/a/1 attempt 2: from the future, current attempt is 1"]

    [retry] = engine.on_result(failure(e1, retryable=True), 2_003).tasks
    stale = engine.on_result(result(e1, "late"), 2_004)
    assert stale.dropped == ["result wf-1/a/1 attempt 1: stale, current attempt is 2"]
    assert (stale.tasks, stale.events, stale.finished) == ([], [], [])

    fx = engine.on_result(result(retry, "y"), 2_005)
    assert kinds(fx) == [(EventKind.STEP_COMPLETED, "a")]
    after = engine.on_result(result(e0, "x"), 2_006)
    assert after.dropped == ["result wf-1/a/0 attempt 1: duplicate, step 'a' already completed"]
    ghost = result(e0.model_copy(update={"task_id": "wf-1/ghost/0"}), "x")
    assert engine.on_result(ghost, 2_007).dropped == [
        "result wf-1/ghost/0 attempt 1: no such task in workflow wf-1"
    ]

    assert terminal(engine.on_result(result(z, "z"), 2_008)).kind is EventKind.COMPLETED
    gone = engine.on_result(result(z, "z"), 2_009)
    assert gone.dropped == ["result wf-1/z/0 attempt 1: workflow wf-1 finished (COMPLETED)"]


def test_for_each_that_is_not_a_list_fails_the_workflow() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [triage] = submit(engine, INCIDENT).tasks
    fx = engine.on_result(result(triage, {"hosts": "web-1"}), 2_000)
    assert kinds(fx) == [(EventKind.STEP_COMPLETED, "triage"), (EventKind.FAILED, None)]
    error = terminal(fx).error
    assert error is not None
    assert (error.type, error.step_id, error.attempt) == ("ResolutionError", "enrich", None)
    assert error.message == (
        "$.steps.triage.output.hosts: for_each must resolve to a list, got a string"
    )
    assert (fx.tasks, engine.active) == ([], 0)


def test_a_reference_that_breaks_at_run_time_fails_the_workflow() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [triage] = submit(engine, INCIDENT).tasks
    fx = engine.on_result(result(triage, {"category": "disk"}), 2_000)
    error = terminal(fx).error
    assert error is not None
    assert (error.type, error.step_id) == ("ResolutionError", "enrich")
    assert error.message == (
        "$.steps.triage.output.hosts: key 'hosts' not found in object with keys ['category']"
    )


def test_a_broken_element_input_names_the_element() -> None:
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(step("each", for_each="$.input", input="$.item.host"), input=[{"host": "a"}, {}])
    error = terminal(submit(engine, doc)).error
    assert error is not None
    assert error.step_id == "each"
    assert error.message.startswith("element 1: $.item.host: key 'host' not found")


def test_a_failure_withdraws_tasks_dispatched_in_the_same_call() -> None:
    engine = Engine(has_capability=lambda cap: True)
    doc = spec(step("fine"), step("broken", input="$.input.missing"), input={})
    fx = submit(engine, doc)
    assert kinds(fx) == [(EventKind.ACCEPTED, None), (EventKind.FAILED, None)]
    assert fx.tasks == []
    assert (engine.active, engine.in_flight) == (0, 0)


def test_a_broken_workflow_output_fails_at_the_end() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [a] = submit(engine, spec(step("a"), output="$.steps.a.output.total")).tasks
    fx = engine.on_result(result(a, [1, 2]), 2_000)
    assert kinds(fx) == [(EventKind.STEP_COMPLETED, "a"), (EventKind.FAILED, None)]
    error = terminal(fx).error
    assert error is not None
    assert (error.type, error.step_id) == ("ResolutionError", None)
    assert error.message == (
        "workflow output: $.steps.a.output.total: cannot index a list (length 2) with key 'total'"
    )


def test_an_invalid_spec_is_rejected_with_every_problem() -> None:
    engine = Engine(has_capability=lambda cap: cap != "missing")
    doc = spec(step("a", needs=["b"]), step("b", needs=["a"], capability="missing"))
    fx = submit(engine, doc, workflow_id="bad")
    assert fx.tasks == []
    event = terminal(fx)
    assert (event.kind, event.workflow_id, event.workflow_name) == (EventKind.REJECTED, "bad", "wf")
    assert (event.submitted_at_ms, event.at_ms) == (500, 1_000)
    assert event.error is not None
    assert event.error.type == "SpecError"
    assert event.error.message == (
        "steps[0] (id 'a').needs: cycle: a -> b -> a (each step needs the next); "
        "steps[1] (id 'b').capability: capability 'missing' has no task topic"
    )
    assert engine.active == 0


def test_a_spec_that_is_not_an_object_is_rejected() -> None:
    event = terminal(submit(Engine(has_capability=lambda cap: True), "just a string"))
    assert event.kind is EventKind.REJECTED
    assert event.workflow_name is None
    assert event.error is not None
    assert event.error.message == 'spec: expected an object, got a string ("just a string")'


def test_a_second_submit_of_an_active_workflow_is_dropped() -> None:
    engine = Engine(has_capability=lambda cap: True)
    [a] = submit(engine, spec(step("a"))).tasks
    fx = submit(engine, spec(step("other")))
    assert fx == Effects(dropped=["workflow wf-1: already active; submit ignored"])
    assert engine.state_of("wf-1") is not None
    assert terminal(engine.on_result(result(a, 1), 2_000)).kind is EventKind.COMPLETED


def test_replaying_the_same_inputs_gives_the_same_effects() -> None:
    def run() -> list[Effects]:
        engine = Engine(has_capability=lambda cap: True)
        log = [submit(engine, INCIDENT)]
        log.append(engine.on_result(result(log[0].tasks[0], {"hosts": ["x", "y"]}), 2_000))
        x, y = log[-1].tasks
        log.append(engine.on_result(failure(y, retryable=False), 3_000))
        log.append(engine.on_result(result(x, 1), 4_000))
        return log

    assert run() == run()


# --- property: random DAGs, random outcomes, random delivery orders and duplicates


@st.composite
def dag_specs(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.integers(1, 6))
    steps, lists = [], {}
    for i in range(size):
        earlier = [f"s{j}" for j in range(i)]
        needs = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        doc: dict[str, Any] = {
            "id": f"s{i}",
            "capability": draw(st.sampled_from(["alpha", "beta"])),
            "needs": needs,
            "retries": draw(st.integers(0, 2)),
            "backoff_s": 0,  # immediate retries: test_engine_replay covers scheduled ones
            "input": {"deps": [f"$.steps.{n}.output" for n in needs]},
        }
        fan_out = draw(st.none() | st.integers(0, 4))
        if fan_out is not None:
            lists[f"s{i}"] = list(range(fan_out))
            doc["for_each"] = f"$.input.lists.s{i}"
            doc["input"]["item"] = "$.item"
        steps.append(doc)
    order = draw(st.permutations(steps))  # spec order need not be topological
    output = {s["id"]: f"$.steps.{s['id']}.output" for s in steps}
    return {"name": "prop", "input": {"lists": lists}, "steps": order, "output": output}


def expected_output(doc: dict[str, Any], workflow_id: str, step_id: str) -> JsonValue:
    """Each task answers {"task": task_id}, so a step's output is known in advance."""
    if step_id in doc["input"]["lists"]:
        size = len(doc["input"]["lists"][step_id])
        return [{"task": f"{workflow_id}/{step_id}/{i}"} for i in range(size)]
    return {"task": f"{workflow_id}/{step_id}/0"}


@settings(max_examples=200, deadline=None)
@given(
    docs=st.lists(dag_specs(), min_size=1, max_size=3),
    all_succeed=st.booleans(),
    data=st.data(),
)
def test_every_workflow_ends_exactly_once_whatever_the_delivery(
    docs: list[dict[str, Any]], all_succeed: bool, data: st.DataObject
) -> None:
    engine = Engine(has_capability=lambda cap: True)
    events: list[WorkflowEvent] = []
    pending: list[TaskAssigned] = []
    delivered: list[TaskResult] = []
    dispatched: Counter[tuple[str, int]] = Counter()
    by_id = {f"wf-{n}": doc for n, doc in enumerate(docs)}
    now = 1_000

    def absorb(fx: Effects) -> None:
        for task in fx.tasks:
            doc = by_id[task.workflow_id]
            needs = next(s["needs"] for s in doc["steps"] if s["id"] == task.step_id)
            # Fan-in: a task sees exactly the outputs of its needs, in element order.
            deps = [expected_output(doc, task.workflow_id, n) for n in needs]
            assert isinstance(task.input, dict)
            assert task.input["deps"] == deps
            dispatched[(task.task_id, task.attempt)] += 1
        events.extend(fx.events)
        pending.extend(fx.tasks)

    for workflow_id, doc in by_id.items():
        absorb(submit(engine, doc, workflow_id=workflow_id))
    duplicates = data.draw(st.integers(0, 10), label="duplicates")
    while pending or duplicates:
        now += 1
        if duplicates and delivered and data.draw(st.booleans(), label="duplicate now"):
            duplicates -= 1
            again = delivered[data.draw(st.integers(0, len(delivered) - 1), label="which")]
            fx = engine.on_result(again, now)
            assert (fx.tasks, fx.events, fx.finished) == ([], [], [])
            assert len(fx.dropped) == 1
            continue
        if not pending:
            break
        task = pending.pop(data.draw(st.integers(0, len(pending) - 1), label="deliver"))
        roll = 19 if all_succeed else data.draw(st.integers(0, 19), label="outcome")
        if roll == 0:
            answer = failure(task, retryable=False)
        elif roll <= 3:
            answer = failure(task, retryable=True)
        elif roll == 4:
            answer = result(task, status=TaskStatus.UNKNOWN)
        else:
            answer = result(task, {"task": task.task_id})
        delivered.append(answer)
        absorb(engine.on_result(answer, now))
        live = [engine.state_of(w) for w in by_id]
        expected_in_flight = sum(
            1 for s in live if s is not None for run in s.tasks.values() if run.in_flight
        )
        assert engine.in_flight == expected_in_flight

    assert engine.active == 0
    assert engine.in_flight == 0
    assert all(count == 1 for count in dispatched.values())
    for task_id in {task_id for task_id, _ in dispatched}:
        attempts = sorted(a for t, a in dispatched if t == task_id)
        assert attempts == list(range(1, len(attempts) + 1))
        workflow_id, step_id, _ = task_id.split("/")
        retries = next(s["retries"] for s in by_id[workflow_id]["steps"] if s["id"] == step_id)
        assert len(attempts) <= retries + 1
    for workflow_id, doc in by_id.items():
        mine = [e for e in events if e.workflow_id == workflow_id]
        assert mine[0].kind is EventKind.ACCEPTED
        ends = [e for e in mine if e.kind.terminal]
        assert len(ends) == 1
        assert mine[-1] is ends[0]
        completed = [e.step_id for e in mine if e.kind is EventKind.STEP_COMPLETED]
        assert len(completed) == len(set(completed))
        if all_succeed:
            assert ends[0].kind is EventKind.COMPLETED
            assert ends[0].output == {
                s["id"]: expected_output(doc, workflow_id, s["id"]) for s in doc["steps"]
            }
