"""Cancellation on the worker: the signal, the registry, and what execute does with it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fleet import App, TaskContext
from fleet.cancellation import Cancellation
from fleet.messages import TaskAssigned
from workers.bridge import HandlerThreads
from workers.cancellation import DEADLINE, CancelRegistry
from workers.execute import Outcome, execute
from workers.shell.metrics import WorkerMetrics

pytestmark = pytest.mark.unit


def task_for(deadline_in_s: float | None = 10.0) -> TaskAssigned:
    now = time.time()
    return TaskAssigned(
        task_id="wf/s/0",
        workflow_id="wf",
        step_id="s",
        capability="cap",
        attempt=3,
        input={"x": 1},
        deadline_ms=None if deadline_in_s is None else int((now + deadline_in_s) * 1000),
        dispatched_at_ms=int(now * 1000),
    )


@pytest.fixture
def threads() -> Iterator[HandlerThreads]:
    pool = HandlerThreads(2, name="test-cancel")
    yield pool
    pool.shutdown(wait=False)


def run_cancelled(
    handler: Callable[..., Any],
    threads: HandlerThreads,
    *,
    after_s: float | None = 0.2,
    task: TaskAssigned | None = None,
    cancellation: Cancellation | None = None,
    **kwargs: Any,
) -> tuple[Outcome, float]:
    """Run ``handler`` and cancel it from another thread ``after_s`` into the run."""
    app = App()
    app.capability("cap")(handler)
    signal = cancellation or Cancellation()
    if after_s is not None:
        threading.Timer(after_s, signal.cancel, ["workflow_cancelled: stop"]).start()
    started = time.monotonic()
    outcome = asyncio.run(
        execute(
            app.get("cap"),
            task or task_for(),
            worker_id="w",
            threads=threads,
            cancellation=signal,
            **kwargs,
        )
    )
    return outcome, time.monotonic() - started


# -- the signal -------------------------------------------------------------------------


def test_a_cancellation_is_set_once_with_its_reason() -> None:
    signal = Cancellation()
    assert not signal.is_set and not signal.event.is_set() and signal.reason is None
    assert signal.cancel("first")
    assert not signal.cancel("second")
    assert signal.is_set and signal.event.is_set() and signal.reason == "first"


def test_wait_returns_when_another_thread_cancels_and_at_once_when_already_set() -> None:
    signal = Cancellation()

    async def waits() -> float:
        started = time.monotonic()
        threading.Timer(0.1, signal.cancel, ["x"]).start()
        await asyncio.wait_for(signal.wait(), 5)
        await asyncio.wait_for(signal.wait(), 0.1)  # set: returns at once
        return time.monotonic() - started

    assert 0.05 < asyncio.run(waits()) < 2


def test_a_waiter_given_up_on_is_forgotten() -> None:
    signal = Cancellation()

    async def gives_up() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(signal.wait(), 0.05)

    asyncio.run(gives_up())
    assert signal._waiters == []
    assert signal.cancel("nobody waits, nothing breaks")


def test_the_context_exposes_the_signal_three_ways() -> None:
    signal = Cancellation()
    ctx = TaskContext.of(task_for(), cancellation=signal)
    assert not ctx.cancelled and not ctx.cancel_event.is_set()
    signal.cancel("timed_out: no result within 30 s")
    assert ctx.cancelled and ctx.cancel_event.is_set()
    asyncio.run(asyncio.wait_for(ctx.wait_cancelled(), 1))
    assert TaskContext.of(task_for()).cancelled is False  # a fresh signal by default


# -- the registry -----------------------------------------------------------------------


def test_the_registry_signals_running_attempts_and_refuses_cancelled_ones() -> None:
    registry = CancelRegistry()
    running = registry.start(("t", 1))
    other_attempt = registry.start(("t", 2))
    assert running is not None and other_attempt is not None
    assert registry.cancel(("t", 1), "timed_out") == 1
    assert running.is_set and running.reason == "timed_out"
    assert not other_attempt.is_set  # the next attempt of the same task runs on
    assert registry.start(("t", 1)) is None  # redelivered after its cancellation
    registry.end(("t", 1), running)
    registry.end(("t", 2), other_attempt)
    assert registry.running == 0
    assert registry.cancel(("gone", 1), "x") == 0  # not here: only remembered


def test_a_cancellation_before_the_task_arrives_keeps_it_from_starting() -> None:
    registry = CancelRegistry()
    registry.cancel(("queued", 1), "workflow_cancelled")
    assert registry.start(("queued", 1)) is None
    assert registry.start(("queued", 2)) is not None


def test_the_same_attempt_running_twice_is_stopped_twice() -> None:
    registry = CancelRegistry()
    first, second = registry.start(("t", 1)), registry.start(("t", 1))
    assert registry.running == 2
    assert registry.cancel(("t", 1), "x") == 2
    assert first is not None and first.is_set and second is not None and second.is_set


def test_the_registry_remembers_a_bounded_number_of_cancellations() -> None:
    registry = CancelRegistry(remember=2)
    for n in range(3):
        registry.cancel((f"t{n}", 1), "x")
    assert registry.start(("t0", 1)) is not None  # forgotten: runs, its result dropped
    assert registry.start(("t1", 1)) is None
    assert registry.start(("t2", 1)) is None


# -- execute ----------------------------------------------------------------------------


def test_an_async_handler_is_cancelled_at_its_await(threads: HandlerThreads) -> None:
    seen: list[str] = []

    async def agent(payload: Any) -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("CancelledError")
            raise
        return "too late"

    outcome, took = run_cancelled(agent, threads)
    assert took < 2
    assert seen == ["CancelledError"]
    assert outcome.cancelled and not outcome.timed_out and not outcome.thread_abandoned
    error = outcome.result.error
    assert error is not None and error.type == "Cancelled"
    assert error.message == "task wf/s/0 attempt 3 cancelled: workflow_cancelled: stop"


def test_an_async_watcher_awaits_wait_cancelled(threads: HandlerThreads) -> None:
    seen: list[str] = []

    async def agent(payload: Any, ctx: TaskContext) -> None:
        async def watcher() -> None:
            await ctx.wait_cancelled()
            seen.append("watcher woke")

        task = asyncio.ensure_future(watcher())
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.wait_for(asyncio.shield(task), 1)

    outcome, took = run_cancelled(agent, threads)
    assert took < 2 and outcome.cancelled
    assert seen == ["watcher woke"]


def test_a_sync_handler_sees_ctx_cancelled_and_returns_early(threads: HandlerThreads) -> None:
    checks: list[bool] = []

    def crunch(payload: Any, ctx: TaskContext) -> str:
        for _ in range(600):  # 60 s unless cancelled
            checks.append(ctx.cancelled)
            if ctx.cancelled:
                return "stopped early"
            time.sleep(0.1)
        return "ran to the end"

    outcome, took = run_cancelled(crunch, threads)
    assert took < 2
    assert checks[0] is False and checks[-1] is True
    assert outcome.cancelled and not outcome.thread_abandoned  # it returned: waited for


def test_a_sync_handler_waiting_on_cancel_event_wakes_at_once(threads: HandlerThreads) -> None:
    def poll(payload: Any, ctx: TaskContext) -> str:
        return "cancelled" if ctx.cancel_event.wait(60) else "done"

    outcome, took = run_cancelled(poll, threads)
    assert took < 2 and outcome.cancelled


def test_a_sync_handler_ignoring_cancellation_is_waited_for_until_its_deadline(
    threads: HandlerThreads,
) -> None:
    """The slot stays taken while the thread really runs; at the deadline the thread is
    abandoned, as without cancellation."""
    released = threading.Event()

    def stubborn(payload: Any) -> str:
        time.sleep(1.5)
        return "ignored it"

    outcome, took = run_cancelled(
        stubborn, threads, task=task_for(deadline_in_s=0.8), on_thread_released=released.set
    )
    assert 0.6 < took < 1.4
    assert outcome.cancelled and outcome.thread_abandoned and not outcome.timed_out
    assert released.wait(5)


def test_a_sync_handler_that_never_got_a_thread_never_runs() -> None:
    pool = HandlerThreads(1)
    gate = threading.Event()
    calls: list[Any] = []
    try:
        pool.submit(gate.wait, 5)  # the only thread is busy
        outcome, took = run_cancelled(calls.append, pool)
        assert took < 2 and outcome.cancelled and not outcome.thread_abandoned
    finally:
        gate.set()
        pool.shutdown(wait=True)
    assert calls == []


def test_an_attempt_cancelled_before_it_starts_is_not_run(threads: HandlerThreads) -> None:
    calls: list[Any] = []
    signal = Cancellation()
    signal.cancel("workflow_cancelled")
    outcome, _ = run_cancelled(calls.append, threads, after_s=None, cancellation=signal)
    assert calls == [] and outcome.cancelled


def test_a_handler_that_swallows_cancelled_error_still_has_no_result(
    threads: HandlerThreads,
) -> None:
    async def swallows(payload: Any) -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "pretends nothing happened"
        return "never"

    outcome, took = run_cancelled(swallows, threads)
    assert took < 2 and outcome.cancelled


def test_the_deadline_tells_an_abandoned_sync_handler_to_stop(threads: HandlerThreads) -> None:
    saw: list[str | None] = []

    def slow(payload: Any, ctx: TaskContext) -> None:
        if ctx.cancel_event.wait(5):
            saw.append(ctx.cancellation.reason)

    outcome, took = run_cancelled(slow, threads, after_s=None, task=task_for(deadline_in_s=0.2))
    assert took < 1
    assert outcome.timed_out and not outcome.cancelled
    deadline = time.monotonic() + 2
    while not saw and time.monotonic() < deadline:
        time.sleep(0.01)
    assert saw == [DEADLINE]


def test_an_uncancelled_task_still_gets_its_result(threads: HandlerThreads) -> None:
    outcome, _ = run_cancelled(lambda p: {"ok": p}, threads, after_s=None)
    assert not outcome.cancelled and outcome.result.output == {"ok": {"x": 1}}


def test_metrics_count_a_cancelled_attempt_as_neither_success_nor_failure(
    threads: HandlerThreads,
) -> None:
    outcome, _ = run_cancelled(lambda p, ctx: ctx.cancel_event.wait(5), threads, after_s=0.05)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.record("cap", outcome)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"capability": "cap", **labels})

    assert sample("fleet_worker_tasks_cancelled_total", when="running") == 1
    assert sample("fleet_worker_tasks_succeeded_total") is None
    assert sample("fleet_worker_tasks_failed_total", retryable="false") is None
