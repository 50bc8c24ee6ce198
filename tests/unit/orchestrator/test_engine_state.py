"""Engine state as changelog records: take_changes, restore, forget."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import JsonValue

from fleet.errors import DecodeError
from fleet.messages import EventKind, WorkflowCancelRequested
from orchestrator.engine import Effects, Engine
from orchestrator.retry import backoff_ms
from orchestrator.timers import Timer, TimerKind
from tests.unit.orchestrator.test_engine import failure, result, spec, step, submit, terminal

pytestmark = pytest.mark.unit


def engine() -> Engine:
    return Engine(has_capability=lambda cap: True, finished_retention_ms=60_000)


def restored(records: dict[str, JsonValue | None]) -> Engine:
    """A fresh engine loaded from records as the changelog holds them (JSON text)."""
    fresh = engine()
    for workflow_id, record in records.items():
        if record is not None:
            fresh.restore(workflow_id, json.loads(json.dumps(record)))
    return fresh


def test_an_active_record_with_a_scheduled_retry() -> None:
    e = engine()
    doc = spec(
        step("each", for_each="$.input", input="$.item", retries=1, timeout_s=10, backoff_s=2),
        input=["x", "y"],
        deadline_s=100,
    )
    x, y = submit(e, doc, now=1_000).tasks
    e.on_result(result(x, "X"), 2_000)
    e.on_result(failure(y, retryable=True), 3_000)
    retry_at = 3_000 + backoff_ms(2.0, 60.0, y.task_id, 1)
    record = e.take_changes()["wf-1"]
    assert record == {
        "v": 1,
        "state": "active",
        "spec": {
            "name": "wf",
            "input": ["x", "y"],
            "steps": [
                {
                    "id": "each",
                    "capability": "work",
                    "needs": [],
                    "input": "$.item",
                    "for_each": "$.input",
                    "retries": 1,
                    "timeout_s": 10.0,
                    "backoff_s": 2.0,
                    "max_backoff_s": 60.0,
                }
            ],
            "output": None,
            "deadline_s": 100.0,
        },
        "submitted_at_ms": 500,
        "outputs": {},
        "running": {
            "each": {"task_ids": ["wf-1/each/0", "wf-1/each/1"], "remaining": 1, "fan_out": True}
        },
        "tasks": {
            "wf-1/each/0": {
                "step_id": "each",
                "index": 0,
                "attempt": 1,
                "dispatched_at_ms": 1_000,
                "deadline_ms": 11_000,
                "input": "x",
                "succeeded": True,
                "output": "X",
                "retry_at_ms": None,
            },
            "wf-1/each/1": {
                "step_id": "each",
                "index": 1,
                "attempt": 1,
                "dispatched_at_ms": 1_000,
                "deadline_ms": 11_000,
                "input": "y",
                "succeeded": False,
                "output": None,
                "retry_at_ms": retry_at,
            },
        },
    }
    fresh = restored({"wf-1": record})
    assert fresh.record_of("wf-1") == record
    assert fresh.pending_timers() == e.pending_timers()
    assert fresh.pending_timers() == [
        Timer(retry_at, TimerKind.RETRY, "wf-1", "wf-1/each/1"),
        Timer(100_500, TimerKind.DEADLINE, "wf-1", ""),
    ]
    assert (fresh.active, fresh.in_flight) == (1, 0)


def test_take_changes_reports_each_changed_workflow_once_then_nothing() -> None:
    e = engine()
    [a1] = submit(e, spec(step("a")), workflow_id="wf-1").tasks
    submit(e, spec(step("a")), workflow_id="wf-2")
    submit(e, spec(step("a")), workflow_id="wf-1")  # dropped: no change
    first = e.take_changes()
    assert list(first) == ["wf-1", "wf-2"]
    assert all(isinstance(r, dict) and r["state"] == "active" for r in first.values())
    assert e.take_changes() == {}
    e.on_result(result(a1, 1, attempt=2), 2_000)  # dropped: no change
    assert e.take_changes() == {}
    e.on_result(result(a1, 1), 2_000)
    assert e.take_changes() == {
        "wf-1": {"v": 1, "state": "finished", "kind": "COMPLETED", "at_ms": 2_000}
    }


def test_taken_records_are_snapshots_not_views_of_the_live_state() -> None:
    e = engine()
    doc = spec(step("each", for_each="$.input", input="$.item"), input=[1, 2])
    x, _ = submit(e, doc).tasks
    record = e.take_changes()["wf-1"]
    before = copy.deepcopy(record)
    e.on_result(result(x, "X"), 2_000)
    assert record == before


def test_a_restored_engine_continues_exactly_where_the_first_stopped() -> None:
    e = engine()
    doc = spec(
        step("a", timeout_s=10, retries=1, backoff_s=0),
        step("b", needs=["a"], input="$.steps.a.output"),
        output="$.steps.b.output",
    )
    [a] = submit(e, doc, now=1_000).tasks
    fresh = restored(e.take_changes())
    assert (fresh.active, fresh.in_flight, fresh.next_due_ms()) == (1, 1, 11_000)
    # The timeout fires from the restored state, as it would have in the first engine.
    fx1, fx2 = e.tick(11_000), fresh.tick(11_000)
    assert fx1 == fx2
    [a2] = fx2.tasks
    assert a2.attempt == 2
    fx1, fx2 = e.on_result(result(a2, "A"), 12_000), fresh.on_result(result(a2, "A"), 12_000)
    assert fx1 == fx2
    assert fresh.on_result(result(a, "old"), 12_001).dropped == [
        "result wf-1/a/0 attempt 1: duplicate, step 'a' already completed"
    ]
    assert e.take_changes() == fresh.take_changes()


def test_a_finished_record_restores_its_expiry() -> None:
    e = engine()
    [a] = submit(e, spec(step("a"))).tasks
    e.on_result(result(a, 1), 2_000)
    fresh = restored(e.take_changes())
    assert (fresh.active, fresh.retained, fresh.next_due_ms()) == (0, 1, 62_000)
    assert submit(fresh, spec(step("a"))).dropped == [
        "workflow wf-1: already finished (COMPLETED); submit ignored"
    ]
    fresh.tick(62_000)
    assert fresh.take_changes() == {"wf-1": None}


def test_restore_replaces_what_memory_holds_for_that_workflow() -> None:
    e = engine()
    doc = spec(step("each", for_each="$.input", input="$.item"), input=[1, 2, 3])
    tasks = submit(e, doc).tasks
    snapshot = e.take_changes()["wf-1"]
    assert snapshot is not None
    e.on_result(result(tasks[0], 0), 2_000)
    assert e.in_flight == 2
    e.restore("wf-1", snapshot)  # back to three in flight
    assert (e.active, e.in_flight) == (1, 3)
    assert e.record_of("wf-1") == snapshot
    assert e.take_changes() == {}  # memory equals the changelog again


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: 42, "state record of workflow wf-1"),
        (lambda r: {**r, "v": 2}, "v"),
        (lambda r: {**r, "state": "zombie"}, "state"),
        (lambda r: {**r, "extra": 1}, "extra"),
        (lambda r: {**r, "spec": {"name": "x"}}, "steps"),
        (lambda r: {**r, "running": {}}, "no running step"),
        (lambda r: {**r, "outputs": {"ghost": 1}}, "unknown steps"),
        (
            lambda r: {**r, "running": {"a": {**r["running"]["a"], "remaining": 2}}},
            "remaining",
        ),
        (lambda r: {**r, "tasks": {}}, "not its own"),
    ],
)
def test_an_invalid_record_is_a_decode_error_and_changes_nothing(mutate: Any, reason: str) -> None:
    e = engine()
    submit(e, spec(step("a")))
    record = e.take_changes()["wf-1"]
    before = e.record_of("wf-1")
    with pytest.raises(DecodeError, match=reason):
        e.restore("wf-1", mutate(record))
    assert e.record_of("wf-1") == before
    assert (e.active, e.in_flight) == (1, 1)


def test_a_finished_record_must_name_a_terminal_kind() -> None:
    with pytest.raises(DecodeError, match="not final"):
        engine().restore("w", {"v": 1, "state": "finished", "kind": "ACCEPTED", "at_ms": 1})


def test_forget_drops_active_and_finished_workflows_with_their_timers() -> None:
    e = engine()
    for n in range(4):
        submit(e, spec(step("a", timeout_s=10)), workflow_id=f"wf-{n}", now=1_000)
    e.take_changes()
    cancelled = e.cancel(WorkflowCancelRequested(workflow_id="wf-3", requested_at_ms=0), 2_000)
    assert terminal(cancelled).kind is EventKind.CANCELLED
    e.forget(lambda workflow_id: workflow_id in ("wf-0", "wf-2"))
    assert (e.active, e.in_flight, e.retained) == (2, 2, 0)
    assert e.state_of("wf-1") is None
    assert e.finished_of("wf-3") is None
    assert e.take_changes() == {}  # wf-3's unreported change went with it
    assert [(t.workflow_id, t.kind) for t in e.pending_timers()] == [
        ("wf-0", TimerKind.TIMEOUT),
        ("wf-2", TimerKind.TIMEOUT),
    ]
    fx = e.tick(11_000)
    assert sorted(ev.workflow_id for ev in fx.events) == ["wf-0", "wf-2"]
    e.forget(lambda workflow_id: False)
    assert (e.active, e.in_flight, e.retained, e.next_due_ms()) == (0, 0, 0, None)
    assert e.take_changes() == {}


def test_forget_keeps_pending_changes_of_kept_workflows() -> None:
    e = engine()
    submit(e, spec(step("a")), workflow_id="mine")
    submit(e, spec(step("a")), workflow_id="theirs")
    e.forget(lambda workflow_id: workflow_id == "mine")
    assert list(e.take_changes()) == ["mine"]
    assert e.tick(10**12) != Effects()
