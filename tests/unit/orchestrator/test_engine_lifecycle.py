"""Engine lifecycle: finished records (idempotent submission) and cancellation."""

from __future__ import annotations

import pytest

from fleet.errors import ConfigError
from fleet.messages import EventKind, WorkflowCancelRequested, WorkflowError
from orchestrator.engine import Effects, Engine, FinishedWorkflow
from tests.unit.orchestrator.test_engine import failure, kinds, result, spec, step, submit, terminal

pytestmark = pytest.mark.unit


def engine(retention_ms: int = 60_000) -> Engine:
    return Engine(has_capability=lambda cap: True, finished_retention_ms=retention_ms)


def cancel(e: Engine, workflow_id: str = "wf-1", reason: str = "", now: int = 5_000) -> Effects:
    request = WorkflowCancelRequested(
        workflow_id=workflow_id, reason=reason, requested_by="ops", requested_at_ms=now - 10
    )
    return e.cancel(request, now)


# --- finished records


def test_a_finished_workflow_is_remembered_and_its_resubmission_dropped() -> None:
    e = engine(retention_ms=60_000)
    [a] = submit(e, spec(step("a"))).tasks
    assert terminal(e.on_result(result(a, 1), 2_000)).kind is EventKind.COMPLETED
    assert (e.active, e.retained) == (0, 1)
    assert e.finished_of("wf-1") == FinishedWorkflow(EventKind.COMPLETED, 2_000)

    again = submit(e, spec(step("a")), now=3_000)
    assert again == Effects(dropped=["workflow wf-1: already finished (COMPLETED); submit ignored"])
    assert e.on_result(result(a, 1), 3_001).dropped == [
        "result wf-1/a/0 attempt 1: workflow wf-1 finished (COMPLETED)"
    ]
    assert e.next_due_ms() == 62_000


def test_the_finished_record_expires_with_a_tombstone_then_the_id_is_free() -> None:
    e = engine(retention_ms=60_000)
    [a] = submit(e, spec(step("a"))).tasks
    e.on_result(result(a, 1), 2_000)
    assert e.take_changes() == {
        "wf-1": {"v": 1, "state": "finished", "kind": "COMPLETED", "at_ms": 2_000}
    }
    assert e.tick(61_999) == Effects()
    assert e.take_changes() == {}
    assert e.tick(62_000) == Effects()  # expiry emits nothing but the tombstone
    assert e.take_changes() == {"wf-1": None}
    assert (e.retained, e.finished_of("wf-1"), e.next_due_ms()) == (0, None, None)
    # After retention the id is new again: a second, separate workflow.
    fx = submit(e, spec(step("a")), now=70_000)
    assert kinds(fx) == [(EventKind.ACCEPTED, None), (EventKind.STEP_STARTED, "a")]


def test_a_rejected_submission_is_remembered_too() -> None:
    e = engine()
    fx = submit(e, spec(step("a", needs=["ghost"])))
    assert terminal(fx).kind is EventKind.REJECTED
    assert e.finished_of("wf-1") == FinishedWorkflow(EventKind.REJECTED, 1_000)
    assert submit(e, spec(step("a"))).dropped == [
        "workflow wf-1: already finished (REJECTED); submit ignored"
    ]


def test_a_failed_workflow_is_remembered() -> None:
    e = engine()
    [a] = submit(e, spec(step("a"))).tasks
    e.on_result(failure(a, retryable=False), 2_000)
    assert submit(e, spec(step("a"))).dropped == [
        "workflow wf-1: already finished (FAILED); submit ignored"
    ]


def test_zero_retention_expires_at_the_next_tick() -> None:
    e = engine(retention_ms=0)
    [a] = submit(e, spec(step("a"))).tasks
    e.on_result(result(a, 1), 2_000)
    assert e.next_due_ms() == 2_000
    e.tick(2_000)
    assert (e.retained, e.take_changes()) == (0, {"wf-1": None})


def test_a_negative_retention_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="finished_retention_ms"):
        engine(retention_ms=-1)


# --- cancellation


def test_cancel_ends_a_running_workflow_with_one_cancelled_event() -> None:
    e = engine()
    doc = spec(step("each", for_each="$.input", input="$.item", retries=2), input=[1, 2])
    first, second = submit(e, doc).tasks
    e.on_result(failure(first, retryable=True), 2_000)  # a retry is scheduled
    fx = cancel(e, reason="operator asked", now=2_500)
    assert fx.tasks == []
    assert kinds(fx) == [(EventKind.CANCELLED, None)]
    event = terminal(fx)
    assert event.error == WorkflowError(type="Cancelled", message="operator asked")
    assert (event.workflow_name, event.submitted_at_ms, event.at_ms) == ("wf", 500, 2_500)
    assert (e.active, e.in_flight, e.retained) == (0, 0, 1)
    assert e.finished_of("wf-1") == FinishedWorkflow(EventKind.CANCELLED, 2_500)

    # No new task ever: neither the scheduled retry nor any timeout fires.
    assert e.next_due_ms() == 2_500 + 60_000
    assert e.tick(60_000) == Effects()
    late = e.on_result(result(second, "late"), 3_000)
    assert late.dropped == ["result wf-1/each/1 attempt 1: workflow wf-1 finished (CANCELLED)"]
    assert (late.tasks, late.events, late.finished) == ([], [], [])


def test_cancel_without_a_reason_says_cancelled() -> None:
    e = engine()
    submit(e, spec(step("a")))
    error = terminal(cancel(e)).error
    assert error == WorkflowError(type="Cancelled", message="cancelled")


def test_a_cancel_that_overtakes_its_submission_ends_it_cancelled_once() -> None:
    e = engine()
    early = cancel(e, "wf-1", now=1_000)
    assert early == Effects(
        dropped=[
            "cancel of workflow wf-1: not submitted yet; a submission within the retention "
            "period ends cancelled"
        ]
    )
    remembered = e.take_changes()
    assert remembered == {
        "wf-1": {
            "v": 1,
            "state": "finished",
            "kind": "CANCELLED",
            "at_ms": 1_000,
            "announced": False,
        }
    }
    # A new owner restores the promise from the changelog and keeps it.
    fresh = engine()
    fresh.restore("wf-1", remembered["wf-1"])
    for owner in (e, fresh):
        late = submit(owner, spec(step("a")))
        assert late.tasks == []
        assert terminal(late).kind is EventKind.CANCELLED
        assert terminal(late).error == WorkflowError(
            type="Cancelled", message="cancelled before it was submitted"
        )
        assert submit(owner, spec(step("a"))).dropped == [
            "workflow wf-1: already finished (CANCELLED); submit ignored"
        ]


def test_cancel_of_a_finished_workflow_is_dropped() -> None:
    e = engine()
    [a] = submit(e, spec(step("a"))).tasks
    e.on_result(result(a, 1), 2_000)
    e.take_changes()
    assert cancel(e) == Effects(
        dropped=["cancel of workflow wf-1: already finished (COMPLETED); ignored"]
    )
    assert e.take_changes() == {}  # a dropped input changes nothing


def test_a_second_cancel_is_dropped_and_a_resubmission_too() -> None:
    e = engine()
    submit(e, spec(step("a")))
    assert terminal(cancel(e)).kind is EventKind.CANCELLED
    assert cancel(e).dropped == ["cancel of workflow wf-1: already finished (CANCELLED); ignored"]
    assert submit(e, spec(step("a"))).dropped == [
        "workflow wf-1: already finished (CANCELLED); submit ignored"
    ]


def test_cancel_touches_only_its_own_workflow() -> None:
    e = engine()
    [a1] = submit(e, spec(step("a")), workflow_id="wf-1").tasks
    [a2] = submit(e, spec(step("a")), workflow_id="wf-2").tasks
    cancel(e, "wf-1")
    assert (e.active, e.in_flight) == (1, 1)
    assert terminal(e.on_result(result(a2, 2), 6_000)).kind is EventKind.COMPLETED
    assert e.on_result(result(a1, 1), 6_001).tasks == []
