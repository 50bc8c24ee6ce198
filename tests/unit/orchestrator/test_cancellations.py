"""Cancellation: the engine tells the workers which dispatched attempts to stop."""

from __future__ import annotations

import pytest

from fleet.messages import (
    CancelReason,
    EventKind,
    MarketOutcomeKind,
    TaskCancelled,
    WorkflowCancelRequested,
)
from orchestrator.engine import Effects, Engine
from tests.unit.orchestrator.test_engine import failure, result, spec, step, submit, terminal
from tests.unit.orchestrator.test_engine_market import (
    CREDIT,
    _bids,
    _engine,
    _grant,
    _outcome,
    _spec,
    _submit,
)

pytestmark = pytest.mark.unit


def engine() -> Engine:
    return Engine(has_capability=lambda cap: True)


def cancel(e: Engine, now: int = 5_000, reason: str = "operator said so") -> Effects:
    request = WorkflowCancelRequested(workflow_id="wf-1", reason=reason, requested_at_ms=now)
    return e.cancel(request, now)


def named(fx: Effects) -> list[tuple[str, int, str]]:
    return [(c.task_id, c.attempt, c.reason) for c in fx.cancellations]


def test_a_cancel_cancels_every_attempt_in_flight_with_its_reason() -> None:
    e = engine()
    doc = spec(
        step("hosts"),
        step("each", needs=["hosts"], for_each="$.steps.hosts.output", input="$.item"),
    )
    [hosts] = submit(e, doc).tasks
    each = e.on_result(result(hosts, ["a", "b", "c"]), 2_000).tasks
    e.on_result(result(each[1], "done"), 3_000)  # element 1 finished: nothing to stop there
    fx = cancel(e, now=5_000)
    assert terminal(fx).kind is EventKind.CANCELLED
    assert fx.cancellations == [
        TaskCancelled(
            task_id=each[i].task_id,
            workflow_id="wf-1",
            capability="work",
            attempt=1,
            reason=CancelReason.WORKFLOW_CANCELLED.value,
            detail="operator said so",
            at_ms=5_000,
        )
        for i in (0, 2)
    ]


def test_a_timed_out_attempt_is_cancelled_and_its_retry_goes_out() -> None:
    e = engine()
    [first] = submit(e, spec(step("a", timeout_s=30, retries=1, backoff_s=0)), now=1_000).tasks
    fx = e.tick(31_000)
    [second] = fx.tasks
    assert second.attempt == 2
    [cancelled] = fx.cancellations
    assert (cancelled.task_id, cancelled.attempt) == (first.task_id, 1)
    assert (cancelled.reason, cancelled.detail) == ("timed_out", "no result within 30 s")
    # Only attempt 2 is cancelled when the workflow is.
    assert named(cancel(e, now=32_000)) == [(first.task_id, 2, "workflow_cancelled")]


def test_a_timeout_that_fails_the_workflow_cancels_its_attempt_once_and_the_siblings() -> None:
    e = engine()
    [slow, other] = submit(e, spec(step("slow", timeout_s=10), step("other", timeout_s=60))).tasks
    fx = e.tick(11_000)
    assert terminal(fx).kind is EventKind.FAILED
    assert named(fx) == [
        (slow.task_id, 1, "timed_out"),
        (other.task_id, 1, "workflow_failed"),
    ]
    assert fx.cancellations[1].detail == terminal(fx).error.message  # type: ignore[union-attr]


def test_a_permanent_failure_cancels_the_siblings_still_running() -> None:
    e = engine()
    [a, b] = submit(e, spec(step("a"), step("b"))).tasks
    fx = e.on_result(failure(a, retryable=False), 2_000)
    assert terminal(fx).kind is EventKind.FAILED
    assert named(fx) == [(b.task_id, 1, "workflow_failed")]  # not a: it already ended


def test_a_workflow_deadline_cancels_what_runs() -> None:
    e = engine()
    [a] = submit(e, spec(step("a", timeout_s=100), deadline_s=10)).tasks
    fx = e.tick(10_500)
    assert terminal(fx).kind is EventKind.FAILED
    assert named(fx) == [(a.task_id, 1, "workflow_failed")]


def test_attempts_backing_off_or_never_sent_are_not_cancelled() -> None:
    e = engine()
    [a] = submit(e, spec(step("a", retries=3, backoff_s=30, max_backoff_s=30))).tasks
    e.on_result(failure(a, retryable=True), 2_000)  # attempt 2 waits for its backoff
    assert cancel(e).cancellations == []


def test_a_failure_in_the_same_input_withdraws_new_tasks_without_cancelling_them() -> None:
    e = engine()
    doc = spec(
        step("a"),
        step("b", needs=["a"]),
        step("c", needs=["a"], for_each="$.steps.a.output"),  # not a list: fails at start
        step("d"),
    )
    [a, d] = submit(e, doc).tasks
    fx = e.on_result(result(a, "not a list"), 2_000)
    assert fx.tasks == []  # b was started, then withdrawn with the failure
    assert named(fx) == [(d.task_id, 1, "workflow_failed")]


def test_an_acquiring_task_is_not_cancelled_its_bid_is_withdrawn() -> None:
    e = _engine()
    fx = _submit(e, _spec({"gpu": 1}))
    assert _bids(fx) and fx.tasks == []
    assert cancel(e).cancellations == []


def test_an_attempt_whose_lease_ended_is_cancelled() -> None:
    e = _engine()
    bid = _bids(_submit(e, _spec({"gpu": 1}, step={"backoff_s": 0})))[0]
    grant = _grant(bid, unit_price=CREDIT)
    (task,) = e.on_market(grant, 2_000).tasks
    fx = e.on_market(_outcome(MarketOutcomeKind.ENDED, bid, "revoked", grant.lease), 3_000)
    assert named(fx) == [(task.task_id, 1, "lease_ended")]
    assert fx.cancellations[0].detail == "lease on gpu revoked"


def test_results_after_a_cancel_are_still_dropped() -> None:
    e = engine()
    [a] = submit(e, spec(step("a"))).tasks
    cancel(e)
    assert e.on_result(result(a, "late"), 6_000).dropped == [
        "result wf-1/a/0 attempt 1: workflow wf-1 finished (CANCELLED)"
    ]


def test_a_restored_engine_cancels_what_the_lost_one_had_in_flight() -> None:
    e = engine()
    [a, b] = submit(e, spec(step("a"), step("b"))).tasks
    e.on_result(result(a, "done"), 2_000)
    fresh = engine()
    for workflow_id, record in e.take_changes().items():
        assert record is not None
        fresh.restore(workflow_id, record)
    assert named(cancel(fresh)) == [(b.task_id, 1, "workflow_cancelled")]
