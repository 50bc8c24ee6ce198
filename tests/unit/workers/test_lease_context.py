"""Leases in the handler context, and the handler deadline they set: a handler that
outlives its lease fails its task (retryable, ``LeaseExpired``) and the worker goes on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fleet import App, TaskContext
from fleet.app import handler_deadline
from fleet.messages import LeaseGrant, TaskAssigned, TaskStatus
from workers.bridge import HandlerThreads
from workers.execute import Outcome, execute

pytestmark = pytest.mark.unit


def now_ms() -> int:
    return int(time.time() * 1000)


def grant(resource: str, expires_in_s: float, *, units: list[int] | None = None) -> LeaseGrant:
    return LeaseGrant(
        resource=resource,
        lease_id=f"bid-{resource}",
        units=units or [0],
        epoch=3,
        seq=17,
        unit_price=250,
        expires_at_ms=now_ms() + int(expires_in_s * 1000),
    )


def task_with(*leases: LeaseGrant, deadline_in_s: float | None = None) -> TaskAssigned:
    return TaskAssigned(
        task_id="wf-1/step/0",
        workflow_id="wf-1",
        step_id="step",
        capability="cap",
        attempt=1,
        input={"x": 1},
        deadline_ms=None if deadline_in_s is None else now_ms() + int(deadline_in_s * 1000),
        dispatched_at_ms=now_ms(),
        leases=list(leases),
    )


@pytest.fixture(scope="module")
def threads() -> Iterator[HandlerThreads]:
    pool = HandlerThreads(2, name="test-lease-handler")
    yield pool
    pool.shutdown(wait=False)


def run_one(handler: Callable[..., Any], task: TaskAssigned, threads: HandlerThreads) -> Outcome:
    app = App()
    app.capability("cap")(handler)
    return asyncio.run(execute(app.get("cap"), task, worker_id="w-1", threads=threads))


# -- the context -------------------------------------------------------------------------


def test_ctx_lease_finds_the_lease_of_a_resource_and_none_elsewhere() -> None:
    gpu, licence = grant("gpu", 60, units=[2, 5]), grant("licence", 30)
    ctx = TaskContext.of(task_with(gpu, licence))
    assert ctx.leases == (gpu, licence)
    assert ctx.lease("gpu") == gpu and ctx.lease("licence") == licence
    assert ctx.lease("tpu") is None
    found = ctx.lease("gpu")
    assert found is not None and (found.units, found.token) == ([2, 5], (3, 17))


def test_a_task_without_resources_sees_no_lease_and_its_own_deadline() -> None:
    task = task_with(deadline_in_s=60)
    ctx = TaskContext.of(task)
    assert ctx.leases == () and ctx.lease("gpu") is None
    assert task.deadline_ms is not None and ctx.deadline == task.deadline_ms / 1000
    assert handler_deadline(task) == (task.deadline_ms, None)
    assert TaskContext.of(task_with()).deadline is None


def test_the_deadline_is_the_earlier_of_the_task_deadline_and_the_first_lease_expiry() -> None:
    soon, late = grant("licence", 5), grant("gpu", 50)
    task = task_with(late, soon, deadline_in_s=30)
    assert handler_deadline(task) == (soon.expires_at_ms, soon)
    ctx = TaskContext.of(task)
    assert ctx.deadline == soon.expires_at_ms / 1000
    remaining = ctx.remaining_s()
    assert remaining is not None and 3 < remaining <= 5
    # The task's deadline first: it stays the cause; no deadline: the lease sets it.
    early = task_with(late, deadline_in_s=10)
    assert early.deadline_ms is not None
    assert handler_deadline(early) == (early.deadline_ms, None)
    assert handler_deadline(task_with(late)) == (late.expires_at_ms, late)
    # At the same moment the lease is named: its units are what may go elsewhere.
    tie = task_with(late).model_copy(update={"deadline_ms": late.expires_at_ms})
    assert handler_deadline(tie) == (late.expires_at_ms, late)


def test_the_handler_gets_its_leases(threads: HandlerThreads) -> None:
    seen: list[TaskContext] = []

    def handler(payload: Any, ctx: TaskContext) -> str:
        seen.append(ctx)
        return "ok"

    gpu = grant("gpu", 60)
    assert run_one(handler, task_with(gpu), threads).result.output == "ok"
    assert seen[0].lease("gpu") == gpu


# -- the lease-expiry deadline ------------------------------------------------------------


def assert_failed_by_the_lease(outcome: Outcome, lease: LeaseGrant) -> None:
    result = outcome.result
    assert result.status is TaskStatus.FAILED and outcome.timed_out
    assert result.error is not None
    assert (result.error.type, result.error.retryable) == ("LeaseExpired", True)
    assert lease.lease_id in result.error.message and "'gpu'" in result.error.message
    # Stopped waiting at the expiry, not at some later deadline.
    assert lease.expires_at_ms <= result.finished_at_ms < lease.expires_at_ms + 2000


def test_an_async_handler_outliving_its_lease_is_cancelled_and_fails_its_task(
    threads: HandlerThreads,
) -> None:
    cancelled = threading.Event()

    async def hold_on(payload: Any) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    gpu = grant("gpu", 0.3)
    outcome = run_one(hold_on, task_with(gpu, deadline_in_s=60), threads)
    assert_failed_by_the_lease(outcome, gpu)
    assert cancelled.is_set() and not outcome.thread_abandoned


def test_a_sync_handler_outliving_its_lease_is_abandoned_and_the_worker_goes_on(
    threads: HandlerThreads,
) -> None:
    release = threading.Event()
    gpu = grant("gpu", 0.3)
    outcome = run_one(lambda p: release.wait(10), task_with(gpu), threads)
    try:
        assert_failed_by_the_lease(outcome, gpu)
        assert outcome.thread_abandoned
        # The next task runs on the other thread while the abandoned one still waits.
        after = run_one(lambda p: "next", task_with(grant("gpu", 30)), threads)
        assert after.result.status is TaskStatus.SUCCEEDED and after.result.output == "next"
    finally:
        release.set()


def test_a_lease_expired_before_the_start_fails_the_task_without_running_it(
    threads: HandlerThreads,
) -> None:
    calls: list[Any] = []
    gpu = grant("gpu", -1)
    outcome = run_one(calls.append, task_with(gpu, deadline_in_s=60), threads)
    assert calls == []
    result = outcome.result
    assert result.error is not None and (result.error.type, result.error.retryable) == (
        "LeaseExpired",
        True,
    )


def test_a_task_deadline_before_the_lease_expiry_is_still_a_timeout(
    threads: HandlerThreads,
) -> None:
    async def hold_on(payload: Any) -> None:
        await asyncio.sleep(30)

    outcome = run_one(hold_on, task_with(grant("gpu", 30), deadline_in_s=0.3), threads)
    assert outcome.timed_out and outcome.result.error is not None
    assert outcome.result.error.type == "TimeoutError"


def test_a_handler_done_before_its_lease_expires_succeeds(threads: HandlerThreads) -> None:
    async def quick(payload: Any, ctx: TaskContext) -> list[int]:
        await asyncio.sleep(0.05)
        gpu = ctx.lease("gpu")
        return gpu.units if gpu else []

    outcome = run_one(quick, task_with(grant("gpu", 5, units=[1, 3])), threads)
    assert outcome.result.status is TaskStatus.SUCCEEDED and outcome.result.output == [1, 3]
    assert not outcome.timed_out
