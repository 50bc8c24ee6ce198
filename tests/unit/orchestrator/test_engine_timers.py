"""Engine timers: step timeouts, durable retries with backoff, workflow deadlines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.messages import EventKind, TaskStatus
from orchestrator.engine import Engine, FinishedTask
from orchestrator.retry import backoff_ms
from orchestrator.timers import Timer, TimerKind, Timers
from tests.unit.orchestrator.test_engine import failure, kinds, result, spec, step, submit, terminal

pytestmark = pytest.mark.unit


def engine() -> Engine:
    return Engine(has_capability=lambda cap: True)


# --- step timeouts


def test_an_attempt_past_its_deadline_is_retried_like_a_retryable_failure() -> None:
    e = engine()
    [first] = submit(e, spec(step("a", timeout_s=30, retries=1, backoff_s=0)), now=1_000).tasks
    assert first.deadline_ms == 31_000
    assert e.next_due_ms() == 31_000
    assert e.tick(30_999) == e.tick(30_999)  # nothing due yet: empty effects
    assert e.tick(30_999).tasks == []
    fx = e.tick(31_000)  # due at or before now
    [second] = fx.tasks
    assert (second.task_id, second.attempt, second.input) == (first.task_id, 2, first.input)
    assert (second.dispatched_at_ms, second.deadline_ms) == (31_000, 61_000)
    assert fx.finished == [FinishedTask(capability="work", latency_ms=30_000, succeeded=False)]
    assert [(ev.kind, ev.attempt) for ev in fx.events] == [(EventKind.STEP_STARTED, 2)]
    assert e.in_flight == 1
    # The first attempt's answer arrives after all: stale.
    late = e.on_result(result(first, "late"), 31_500)
    assert late.dropped == ["result wf-1/a/0 attempt 1: stale, current attempt is 2"]
    assert terminal(e.on_result(result(second, "ok"), 32_000)).kind is EventKind.COMPLETED


def test_a_timeout_without_retries_left_fails_the_workflow_with_a_clear_cause() -> None:
    e = engine()
    [task] = submit(e, spec(step("a", timeout_s=30)), now=1_000).tasks
    fx = e.tick(40_000)
    assert kinds(fx) == [(EventKind.FAILED, None)]
    error = terminal(fx).error
    assert error is not None
    assert (error.type, error.step_id, error.attempt) == ("TimeoutError", "a", 1)
    assert error.message == (
        "task wf-1/a/0 attempt 1 failed, retries exhausted (0 allowed): no result within 30 s"
    )
    assert terminal(fx).at_ms == 40_000
    assert (e.active, e.in_flight) == (0, 0)
    assert e.on_result(result(task, "late"), 41_000).dropped == [
        "result wf-1/a/0 attempt 1: workflow wf-1 finished (FAILED)"
    ]


def test_fractional_timeouts_are_named_as_written() -> None:
    e = engine()
    submit(e, spec(step("a", timeout_s=2.5)), now=0)
    error = terminal(e.tick(2_500)).error
    assert error is not None
    assert error.message.endswith("no result within 2.5 s")


def test_an_accepted_result_disarms_the_timeout() -> None:
    e = engine()
    doc = spec(step("a", timeout_s=10), step("b", needs=["a"], timeout_s=20))
    [a] = submit(e, doc, now=0).tasks
    [b] = e.on_result(result(a, 1), 5_000).tasks
    assert e.next_due_ms() == 25_000  # b's deadline; a's timer is gone
    assert e.tick(24_999).events == []
    assert terminal(e.on_result(result(b, 2), 24_999)).kind is EventKind.COMPLETED
    assert e.tick(10**9).events == []


def test_only_the_timed_out_element_of_a_fan_out_is_retried() -> None:
    e = engine()
    doc = spec(
        step("each", for_each="$.input", input="$.item", timeout_s=10, retries=1, backoff_s=0),
        input=["x", "y", "z"],
    )
    x, y, z = submit(e, doc, now=0).tasks
    e.on_result(result(x, "X"), 1_000)
    e.on_result(result(z, "Z"), 2_000)
    [y2] = e.tick(10_000).tasks
    assert (y2.task_id, y2.attempt, y2.index, y2.input) == (y.task_id, 2, 1, "y")
    fx = e.on_result(result(y2, "Y"), 11_000)
    assert fx.events[0].output == ["X", "Y", "Z"]


# --- durable retries with backoff


def test_a_retry_waits_out_its_backoff_and_is_dispatched_once_by_tick() -> None:
    e = engine()
    doc = spec(step("a", retries=3, timeout_s=10, backoff_s=1.0, max_backoff_s=60.0))
    [first] = submit(e, doc, now=1_000).tasks
    fx = e.on_result(failure(first, retryable=True), 2_000)
    assert (fx.tasks, fx.events) == ([], [])
    assert fx.finished == [
        FinishedTask(
            capability="work", latency_ms=1_000, succeeded=False, tenant="default", usage=[]
        )
    ]
    delay = backoff_ms(1.0, 60.0, first.task_id, 1)
    assert 500 <= delay <= 1_000
    run = e.state_of("wf-1")
    assert run is not None
    assert run.tasks[first.task_id].retry_at_ms == 2_000 + delay
    assert (e.in_flight, e.next_due_ms()) == (0, 2_000 + delay)

    # Duplicates of the failure and ticks before the due time change nothing.
    again = e.on_result(failure(first, retryable=True), 2_001)
    assert again.dropped == [
        f"result wf-1/a/0 attempt 1: stale, attempt 1 already ended; "
        f"attempt 2 is due at {2_000 + delay}"
    ]
    assert e.tick(2_000 + delay - 1).tasks == []
    early = e.on_result(result(first, "x", attempt=2), 2_002)
    assert early.dropped == ["result wf-1/a/0 attempt 2: from the future, current attempt is 1"]

    [second] = e.tick(2_000 + delay + 7).tasks
    assert (second.attempt, second.input) == (2, first.input)
    assert (second.dispatched_at_ms, second.deadline_ms) == (2_007 + delay, 12_007 + delay)
    assert e.in_flight == 1
    assert e.tick(2_000 + delay + 7).tasks == []  # a second tick does not dispatch again
    assert terminal(e.on_result(result(second, "ok"), 20_000)).output is None


def test_backoff_doubles_per_attempt_up_to_the_cap() -> None:
    e = engine()
    doc = spec(step("a", retries=5, timeout_s=1_000, backoff_s=1.0, max_backoff_s=5.0))
    [task] = submit(e, doc, now=0).tasks
    now = 0
    for attempt in range(1, 6):
        now += 10
        e.on_result(failure(task, retryable=True), now)
        expected = backoff_ms(1.0, 5.0, task.task_id, attempt)
        base = min(5_000, 1_000 * 2 ** (attempt - 1))
        assert base // 2 <= expected <= base
        assert e.next_due_ms() == now + expected
        now += expected
        [task] = e.tick(now).tasks
        assert task.attempt == attempt + 1
    fx = e.on_result(failure(task, retryable=True, message="still down"), now + 1)
    error = terminal(fx).error
    assert error is not None
    assert error.message.endswith("attempt 6 failed, retries exhausted (5 allowed): still down")


def test_a_timeout_schedules_its_retry_too() -> None:
    e = engine()
    [first] = submit(e, spec(step("a", retries=1, timeout_s=5, backoff_s=2)), now=0).tasks
    assert e.tick(5_000).tasks == []
    delay = backoff_ms(2.0, 60.0, first.task_id, 1)
    assert e.next_due_ms() == 5_000 + delay
    late = e.on_result(result(first, "late"), 5_001)
    assert late.dropped == [
        f"result wf-1/a/0 attempt 1: stale, attempt 1 already ended; "
        f"attempt 2 is due at {5_000 + delay}"
    ]
    [second] = e.tick(5_000 + delay).tasks
    assert second.attempt == 2


def test_permanent_and_unknown_failures_are_never_scheduled() -> None:
    e = engine()
    [task] = submit(e, spec(step("a", retries=3, backoff_s=1))).tasks
    fx = e.on_result(result(task, status=TaskStatus.UNKNOWN), 2_000)
    assert terminal(fx).kind is EventKind.FAILED
    assert e.next_due_ms() == 2_000 + 3_600_000  # only the finished record's expiry


@settings(max_examples=300, deadline=None)
@given(
    backoff_s=st.floats(0, 1_000, allow_nan=False),
    extra_s=st.floats(0, 1_000, allow_nan=False),
    task_id=st.text(max_size=30),
    attempt=st.integers(1, 10_000),
)
def test_backoff_is_deterministic_and_within_half_to_full_of_the_capped_base(
    backoff_s: float, extra_s: float, task_id: str, attempt: int
) -> None:
    max_backoff_s = backoff_s + extra_s
    delay = backoff_ms(backoff_s, max_backoff_s, task_id, attempt)
    assert delay == backoff_ms(backoff_s, max_backoff_s, task_id, attempt)
    base_ms = min(max_backoff_s, backoff_s * 2.0 ** min(attempt - 1, 63)) * 1000
    assert round(base_ms * 0.5) <= delay <= round(base_ms)


def test_jitter_differs_between_tasks_failing_together() -> None:
    delays = {backoff_ms(10.0, 60.0, f"wf-1/each/{i}", 1) for i in range(50)}
    assert len(delays) > 40  # spread, not one thundering herd
    assert all(5_000 <= d <= 10_000 for d in delays)


def test_zero_backoff_retries_at_once() -> None:
    assert backoff_ms(0.0, 0.0, "t", 1) == 0
    assert backoff_ms(0.0, 60.0, "t", 50) == 0


# --- workflow deadlines


def test_a_workflow_past_its_deadline_fails_from_tick() -> None:
    e = engine()
    doc = spec(step("a", timeout_s=100), step("b", needs=["a"]), deadline_s=10)
    [a] = submit(e, doc, now=1_000).tasks  # submitted_at_ms is 500
    assert e.next_due_ms() == 10_500
    [b] = e.on_result(result(a, 1), 2_000).tasks
    assert e.tick(10_499).events == []
    fx = e.tick(10_500)
    assert kinds(fx) == [(EventKind.FAILED, None)]
    error = terminal(fx).error
    assert error is not None
    assert (error.type, error.step_id, error.attempt) == ("DeadlineExceeded", None, None)
    assert error.message == "workflow not finished within its deadline of 10 s (due at 10500)"
    assert (e.active, e.in_flight) == (0, 0)
    assert e.on_result(result(b, 2), 10_600).dropped == [
        "result wf-1/b/0 attempt 1: workflow wf-1 finished (FAILED)"
    ]


def test_a_deadline_beats_a_pending_retry() -> None:
    e = engine()
    doc = spec(step("a", retries=5, backoff_s=30, max_backoff_s=30), deadline_s=5)
    [a] = submit(e, doc, now=1_000).tasks
    e.on_result(failure(a, retryable=True), 2_000)  # retry due at 17 s or later
    fx = e.tick(60_000)
    assert fx.tasks == []
    assert terminal(fx).error is not None
    assert [ev.error.type for ev in fx.events if ev.error] == ["DeadlineExceeded"]


def test_a_deadline_already_past_at_submit_dispatches_nothing() -> None:
    e = engine()
    fx = submit(e, spec(step("a"), deadline_s=1), now=5_000)  # due at 1_500
    assert kinds(fx) == [(EventKind.ACCEPTED, None), (EventKind.FAILED, None)]
    assert fx.tasks == []
    error = terminal(fx).error
    assert error is not None
    assert error.type == "DeadlineExceeded"
    assert e.in_flight == 0


def test_finishing_in_time_disarms_the_deadline() -> None:
    e = engine()
    [a] = submit(e, spec(step("a"), deadline_s=10), now=1_000).tasks
    assert terminal(e.on_result(result(a, 1), 2_000)).kind is EventKind.COMPLETED
    assert e.next_due_ms() == 2_000 + 3_600_000  # the finished record's expiry only
    assert e.tick(20_000).events == []


def test_timers_due_together_fire_in_a_fixed_order_across_workflows() -> None:
    e = engine()
    for n in (2, 1, 3):
        submit(e, spec(step("a", timeout_s=10)), workflow_id=f"wf-{n}", now=0)
    fx = e.tick(10_000)
    assert [ev.workflow_id for ev in fx.events] == ["wf-1", "wf-2", "wf-3"]


# --- the timer index


def test_timers_pop_in_due_order_and_skip_replaced_or_cancelled_ones() -> None:
    timers = Timers()
    timers.set(Timer(30, TimerKind.TIMEOUT, "w", "t1"))
    timers.set(Timer(10, TimerKind.TIMEOUT, "w", "t2"))
    timers.set(Timer(20, TimerKind.RETRY, "w", "t2"))  # replaces t2's timeout
    timers.set(Timer(5, TimerKind.DEADLINE, "v", ""))
    timers.cancel("v")
    assert (len(timers), timers.count(TimerKind.TIMEOUT), timers.count(TimerKind.RETRY)) == (
        2,
        1,
        1,
    )
    assert timers.next_due_ms() == 20
    assert timers.pop_due(19) is None
    assert timers.pop_due(100) == Timer(20, TimerKind.RETRY, "w", "t2")
    assert timers.pop_due(100) == Timer(30, TimerKind.TIMEOUT, "w", "t1")
    assert timers.pop_due(100) is None
    assert (len(timers), timers.next_due_ms(), timers.count(TimerKind.TIMEOUT)) == (0, None, 0)


def test_timers_set_cancel_set_again_fires_once() -> None:
    timers = Timers()
    timer = Timer(10, TimerKind.TIMEOUT, "w", "t")
    timers.set(timer)
    timers.cancel("w", "t")
    timers.set(timer)
    timers.set(timer)
    assert timers.pop_due(10) == timer
    assert timers.pop_due(10) is None


def test_stale_heap_entries_stay_bounded_by_the_live_ones() -> None:
    timers = Timers()
    for i in range(10_000):
        timers.set(Timer(i, TimerKind.TIMEOUT, "w", f"t{i % 10}"))
        if i % 3 == 0:
            timers.cancel("w", f"t{(i + 5) % 10}")
        assert len(timers._heap) <= 2 * len(timers) + 64
    assert timers.pending() == sorted(timers.pending())


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["set", "cancel", "pop"]),
            st.integers(0, 5),  # key
            st.integers(0, 50),  # due / now
            st.sampled_from(list(TimerKind)),
        ),
        max_size=80,
    )
)
def test_timers_behave_like_a_plain_map_of_pending_timers(
    ops: list[tuple[str, int, int, TimerKind]],
) -> None:
    timers = Timers()
    model: dict[str, Timer] = {}
    for op, key, number, kind in ops:
        task_id = f"t{key}"
        if op == "set":
            timers.set(Timer(number, kind, "w", task_id))
            model[task_id] = Timer(number, kind, "w", task_id)
        elif op == "cancel":
            timers.cancel("w", task_id)
            model.pop(task_id, None)
        else:
            due = sorted(t for t in model.values() if t.due_ms <= number)
            popped = timers.pop_due(number)
            assert popped == (due[0] if due else None)
            if popped is not None:
                del model[popped.task_id]
        assert timers.pending() == sorted(model.values())
        assert timers.next_due_ms() == (min(model.values()).due_ms if model else None)
        for kind_ in TimerKind:
            assert timers.count(kind_) == sum(1 for t in model.values() if t.kind is kind_)
